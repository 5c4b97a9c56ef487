"""Config validation: every mistake names the file, the line, the field and what was expected."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bot.config.loader import ConfigError, load_config, parse_config
from tests.conftest import ROOT

MINIMAL = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
groups:
  - {id: g1, room_id: "g1@chatroom", officer: wang}
routes:
  - id: fire
    category: fire
    match: {any: [着火]}
"""


def test_default_config_is_valid() -> None:
    config = load_config(ROOT / "config.yaml")
    assert config.station.id == "huamu"
    assert {g.id for g in config.groups} == {"jinxiu", "lianyang", "fangdian"}
    assert {o.role.value for o in config.officers} == {"community", "duty", "supervisor", "antifraud"}


def test_minimal_config_is_valid() -> None:
    config = parse_config(MINIMAL)
    assert config.timezone == "Asia/Shanghai"
    assert config.routes[0].match.any == ["着火"]


@pytest.mark.parametrize(
    ("broken", "line", "field", "expected"),
    [
        # (text replaced in MINIMAL, line reported, field path, fragment of the message)
        (("role: community", "role: boss"), 3, "officers[0].role", "'community', 'duty', 'supervisor'"),
        (("officer: wang}", "officer: nobody}"), 5, "groups[0].officer", "unknown officer 'nobody'"),
        (("match: {any: [着火]}", "match: {regex: ['(']}"), 9, "routes[0].match.regex", "invalid regular expression"),
        (("match: {any: [着火]}", "match: {}"), 7, "routes[0]", "needs match.any"),
        (("category: fire", "category: fire\n    reply: '{{ x '"), 9, "routes[0].reply", "template does not compile"),
        (("station: {id: s1,", "station: {idd: s1,"), 1, "station.idd", "unknown setting"),
        (("station: {id: s1, name: 测试派出所}\n", ""), None, "station", "required setting is missing"),
        (("{id: g1, room_id: \"g1@chatroom\", officer: wang}", "{id: g1, officer: wang}"), 5, "groups[0]",
         "needs room_id or topic"),
        (("name: 测试派出所}\n", "name: 测试派出所}\ndatabase: {sqlite_sync: sometimes}\n"), 2,
         "database.sqlite_sync", "'full' or 'normal'"),
        (("name: 测试派出所}\n", "name: 测试派出所}\nintake: {payload_helper: sometimes}\n"), 2,
         "intake.payload_helper", "'off', 'on' or 'auto'"),
    ],
)
def test_invalid_config_names_line_and_field(
    broken: tuple[str, str], line: int | None, field: str, expected: str
) -> None:
    old, new = broken
    assert old in MINIMAL
    with pytest.raises(ConfigError) as caught:
        parse_config(MINIMAL.replace(old, new), "station.yaml")
    issues = caught.value.issues
    assert field in [i.field for i in issues], [str(i) for i in issues]
    issue = next(i for i in issues if i.field == field)
    assert issue.file == "station.yaml"
    assert expected in issue.message
    if line is not None:
        assert issue.line == line
    assert str(issue).startswith("station.yaml:")


def test_yaml_syntax_error_has_a_line() -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config("station: {id: s1\nofficers: [", "bad.yaml")
    assert caught.value.issues[0].line is not None
    assert "invalid YAML" in caught.value.issues[0].message


def test_duplicate_route_ids_are_rejected() -> None:
    text = MINIMAL + "  - id: fire\n    match: {any: [冒烟]}\n"
    with pytest.raises(ConfigError) as caught:
        parse_config(text)
    issue = caught.value.issues[0]
    assert (issue.line, issue.field) == (10, "routes[1].id")
    assert "duplicate route id 'fire'" in issue.message


@pytest.mark.parametrize(("written", "mode"), [("on", "on"), ("off", "off"), ("true", "on"), ("false", "off"),
                                              ("auto", "auto"), (None, "auto")])
def test_the_payload_helper_setting_reads_yaml_booleans_as_on_and_off(written: str | None, mode: str) -> None:
    text = MINIMAL if written is None else MINIMAL + f"intake: {{payload_helper: {written}}}\n"
    assert parse_config(text).intake.payload_helper == mode


def test_shift_times_are_parsed_including_unquoted_and_midnight() -> None:
    text = MINIMAL + "shifts:\n  - {officer: wang, days: daily, start: 08:30, end: \"24:00\"}\n"
    shift = parse_config(text).shifts[0]
    assert shift.start.hour == 8 and shift.start.minute == 30
    assert shift.end.hour == 23 and shift.end.minute == 59
    assert len(shift.days) == 7


def _run_main(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(ROOT / "main.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_cli_check_accepts_the_default_config() -> None:
    result = _run_main("check", "--config", str(ROOT / "config.yaml"))
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout


def test_cli_check_and_run_refuse_an_invalid_config(tmp_path: Path) -> None:
    bad = tmp_path / "config.yaml"
    bad.write_text(MINIMAL.replace("role: community", "role: boss"), encoding="utf-8")
    for args in (("check", "--config", str(bad)), ("--config", str(bad))):
        result = _run_main(*args, cwd=tmp_path)
        assert result.returncode == 2
        assert f"{bad}:3: officers[0].role:" in result.stderr
