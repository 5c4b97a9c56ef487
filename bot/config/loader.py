"""Read ``config.yaml``: YAML with line numbers, pydantic validation, errors that name file, line and field."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bot.config.inquiry_schema import inquiry_reference_errors
from bot.config.schema import Config, iter_routes, reference_errors
from bot.config.schema import Path as FieldPath
from bot.config.templates import template_error


@dataclass(frozen=True)
class ConfigIssue:
    file: str
    line: int | None
    field: str
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        field = f" {self.field}:" if self.field else ""
        return f"{where}:{field} {self.message}"


class ConfigError(Exception):
    def __init__(self, issues: list[ConfigIssue]) -> None:
        self.issues = issues
        super().__init__("\n".join(str(issue) for issue in issues))


def format_path(path: FieldPath) -> str:
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read the file: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", "the file is not UTF-8 text")]) from exc
    return parse_config(text, str(path))


def read_yaml(text: str, filename: str) -> tuple[yaml.Node | None, Any]:
    """Parse YAML keeping the node tree (for line numbers); a syntax error is a ConfigError with its line."""
    try:
        loader = yaml.SafeLoader(text)
        try:
            root = loader.get_single_node()
            data = loader.construct_document(root) if root is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = " ".join(part for part in (exc.context, exc.problem) if part)
        raise ConfigError([ConfigIssue(filename, line, "", f"invalid YAML: {problem}")]) from exc
    except yaml.YAMLError as exc:
        raise ConfigError([ConfigIssue(filename, None, "", f"invalid YAML: {exc}")]) from exc
    return root, data


def parse_config(text: str, filename: str = "config.yaml") -> Config:
    root, data = read_yaml(text, filename)
    if not isinstance(data, dict) or root is None:
        raise ConfigError([ConfigIssue(filename, 1, "", "expected a mapping of settings at the top level")])

    locate = YamlLocator(root, filename)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([locate.validation_issue(error) for error in exc.errors()]) from exc

    issues = [locate.issue(path, message) for path, message in reference_errors(config)]
    issues += [locate.issue(path, message) for path, message in _template_errors(config)]
    issues += [locate.issue(path, message) for path, message in inquiry_reference_errors(config)]
    if issues:
        raise ConfigError(issues)
    return config


def _template_errors(config: Config) -> list[tuple[FieldPath, str]]:
    errors: list[tuple[FieldPath, str]] = []
    for path, route in iter_routes(config.routes):
        for field in ("reply", "ping"):
            source = getattr(route, field)
            if source and (error := template_error(source)):
                errors.append(((*path, field), error))
    for field, source in config.texts.model_dump().items():
        if error := template_error(source):
            errors.append((("texts", field), error))
    return errors


class YamlLocator:
    """Maps a field path to the YAML node it came from, to report line numbers."""

    def __init__(self, root: yaml.Node, filename: str) -> None:
        self.root = root
        self.filename = filename

    def node_at(self, path: FieldPath) -> yaml.Node:
        node = self.root
        for part in path:
            child = self._child(node, part)
            if child is None:
                break
            node = child
        return node

    @staticmethod
    def _child(node: yaml.Node, part: str | int) -> yaml.Node | None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode) and key.value == str(part):
                    return value
        if isinstance(node, yaml.SequenceNode) and isinstance(part, int) and 0 <= part < len(node.value):
            return node.value[part]
        return None

    def issue(self, path: FieldPath, message: str) -> ConfigIssue:
        return ConfigIssue(self.filename, self.node_at(path).start_mark.line + 1, format_path(path), message)

    def validation_issue(self, error: Any) -> ConfigIssue:
        # pydantic puts union/function-validator tags into loc; keep only real keys and indexes.
        path = tuple(part for part in error["loc"] if isinstance(part, int) or not str(part).startswith("function-"))
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown setting (check the spelling; see the comments in config.yaml)"
        elif error["type"] == "missing":
            message = "required setting is missing"
        elif "input" in error and error["type"] not in ("value_error",) and not isinstance(error["input"], dict | list):
            message = f"{message} (got {error['input']!r})"
        return self.issue(path, message)
