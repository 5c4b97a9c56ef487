"""A district: several stations, each with its own config file and bot account, sharing one database.

    # district.yaml
    district: {id: pudong, name: 浦东分局}
    database: {url: postgresql+asyncpg://gonghao@127.0.0.1:5432/gonghao}
    stations: [stations/huamu.yaml, stations/lujiazui.yaml]   # relative to this file

`python main.py --config district.yaml` runs every station in one process; `--station huamu` runs one, so a
district can also run one process per station against the same PostgreSQL database.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from bot.config.loader import ConfigError, ConfigIssue, YamlLocator, load_config
from bot.config.schema import Config, DatabaseConfig, StationConfig


class DistrictFile(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    district: StationConfig
    database: DatabaseConfig
    stations: list[str] = Field(min_length=1)


class District:
    def __init__(self, path: Path, spec: DistrictFile, stations: list[tuple[Path, Config]]) -> None:
        self.path = path
        self.spec = spec
        self.stations = stations  # (config file, config with the district's database)

    def station_ids(self) -> list[str]:
        return [config.station.id for _, config in self.stations]


def is_district_file(path: Path) -> bool:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return False
    return isinstance(data, dict) and "stations" in data


def load_district(path: str | Path) -> District:
    path = Path(path)
    try:
        root = yaml.compose(path.read_text(encoding="utf-8"))
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError([ConfigIssue(str(path), None, "", f"cannot read the district file: {exc}")]) from exc
    locate = YamlLocator(root, str(path))
    try:
        spec = DistrictFile.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([locate.validation_issue(error) for error in exc.errors()]) from exc
    stations: list[tuple[Path, Config]] = []
    issues: list[ConfigIssue] = []
    seen: dict[str, Path] = {}
    for index, relative in enumerate(spec.stations):
        station_path = (path.parent / relative).resolve()
        try:
            config = load_config(station_path)
        except ConfigError as exc:
            issues.extend(exc.issues)
            continue
        if config.station.id in seen:
            issues.append(locate.issue(("stations", index),
                                       f"station id {config.station.id!r} is also used by {seen[config.station.id]}"))
            continue
        seen[config.station.id] = station_path
        # one database for the district: the district file's wins over each station's own
        stations.append((station_path, config.model_copy(update={"database": spec.database})))
    if issues:
        raise ConfigError(issues)
    return District(path, spec, stations)
