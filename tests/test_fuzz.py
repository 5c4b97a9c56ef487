"""Property tests: the officer-command parser and the config loader never crash on hostile input; they
answer with a command or a located error."""

from __future__ import annotations

import string

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bot.config.loader import ConfigError, parse_config
from handlers.commands import Command, parse_command
from tests.conftest import ROOT

_COMMAND_WORDS = ["收到", "处理完毕", "结", "转", "值班", "我的", "帮助", "预警", "确认", "取消", "草稿", "#", "１２"]


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.sampled_from(_COMMAND_WORDS), st.text(max_size=8), st.integers(0, 10**12).map(str)),
                max_size=6).map(" ".join))
def test_command_parser_total(text: str) -> None:
    command = parse_command(text)
    assert isinstance(command, Command)
    assert command.name in {"ack", "resolve", "transfer", "duty", "mine", "help", "unknown", "warn", "warn_draft",
                            "confirm", "cancel"}
    if command.number is not None:
        assert command.number >= 0


DEFAULT = (ROOT / "config.yaml").read_text(encoding="utf-8")


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_config_loader_reports_located_errors(data: st.DataObject) -> None:
    lines = DEFAULT.splitlines()
    index = data.draw(st.integers(0, len(lines) - 1))
    junk = data.draw(st.one_of(st.text(alphabet=string.printable + "：，【】中文", max_size=20),
                               st.sampled_from(["  - x", "role: chief", "days: [someday]", "start: 99:99", "{",
                                                "after: soon", "severity: P9", "- id: fire"])))
    mutated = "\n".join([*lines[:index], junk, *lines[index + 1:]])
    try:
        parse_config(mutated, "fuzz.yaml")
    except ConfigError as exc:
        assert exc.issues
        for issue in exc.issues:
            assert issue.file == "fuzz.yaml" and issue.message
            assert issue.line is None or 1 <= issue.line <= len(lines) + 1
