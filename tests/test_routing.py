"""Routing as tables of cases over inline YAML, in the style of Alertmanager's route tests."""

from __future__ import annotations

import pytest

from bot.config.loader import load_config, parse_config
from handlers.normalize import normalize, normalize_with_offsets
from handlers.routing import Router
from tests.conftest import ROOT

TREE = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
groups:
  - {id: g1, room_id: "g1@chatroom"}
  - {id: g2, room_id: "g2@chatroom"}
routes:
  - id: fire
    category: fire
    severity: P1
    match:
      any: [着火, 冒烟]
      exclude: [演习, 火锅]
  - id: lost_child
    category: lost_child
    severity: P1
    match:
      all: [[孩子, 小孩], [找不到, 走丢]]
  - id: scam
    category: scam
    match:
      any: [刷单, 转账]
      regex: ['\\d{6}.*验证码']
    routes:
      - id: scam_rebate
        match: {any: [刷单返利]}
      - id: scam_code
        severity: P1
        match: {regex: ['验证码']}
  - id: g2_only
    category: noise
    groups: [g2]
    continue: true
    match: {any: [噪音]}
  - id: noise_everywhere
    category: noise2
    match: {any: [噪音]}
"""

CASES = [
    # text, group, expected route ids in order
    ("楼道着火了", None, ["fire"]),
    ("楼道冒烟！", "g1", ["fire"]),
    ("消防演习，楼道会冒烟", None, []),
    ("今晚吃火锅，锅着火了哈哈", None, []),
    ("孩子找不到了", None, ["lost_child"]),
    ("小孩子在哪", None, []),
    ("找不到钥匙", None, []),
    ("做刷单返利被骗", None, ["scam_rebate"]),  # nested keyword 刷单 inside 刷单返利 still matches the parent
    ("有人让我刷单", None, ["scam"]),
    ("收到123456验证码别告诉别人", None, ["scam_code"]),
    ("转 账", None, ["scam"]),  # spaces between characters do not dodge the filter
    ("轉賬", None, ["scam"]),  # traditional characters
    ("楼下有噪音", "g2", ["g2_only", "noise_everywhere"]),  # continue lets a second route match
    ("楼下有噪音", "g1", ["noise_everywhere"]),  # scoped route skipped outside its groups
    ("今晚吃火锅吗", None, []),
    ("", None, []),
]


@pytest.fixture(scope="module")
def router() -> Router:
    return Router(parse_config(TREE))


@pytest.mark.parametrize(("text", "group", "expected"), CASES)
def test_route_table(router: Router, text: str, group: str | None, expected: list[str]) -> None:
    decision = router.classify(text, group)
    assert [m.route.id for m in decision.matches] == expected
    # the explaining path must decide exactly as production does
    explained, _ = router.explain(text, group)
    assert [m.route.id for m in explained.matches] == expected


def test_children_inherit_from_parent(router: Router) -> None:
    match = router.classify("做刷单返利")
    assert match.first is not None
    assert match.first.route.category == "scam"
    assert match.first.route.path == ("scam", "scam_rebate")
    assert match.first.route.severity.value == "P2"  # parent's default severity
    code = router.classify("短信123456是验证码").first
    assert code is not None and code.route.severity.value == "P1"


def test_explain_reports_keywords_positions_and_vetoes(router: Router) -> None:
    decision, offsets = router.explain("消防 演习:楼道冒烟")
    assert decision.matches == ()
    assert [v.route.id for v in decision.vetoed] == ["fire"]
    veto_hit = decision.vetoed[0].hits[0]
    assert veto_hit.keyword == "演习"
    assert (offsets[veto_hit.start], offsets[veto_hit.end - 1] + 1) == (3, 5)
    decision, offsets = router.explain("裸 着火")
    hit = decision.matches[0].hits[0]
    assert (hit.keyword, offsets[hit.start], offsets[hit.end - 1] + 1) == ("着火", 2, 4)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("裸 聊", "裸聊"),
        ("转-账", "转账"),
        ("刷.单", "刷单"),
        ("ＡＢＣ１２３", "abc123"),
        ("國際轉賬😀！", "国际转账"),
        ("  ", ""),
    ],
)
def test_normalize(text: str, expected: str) -> None:
    assert normalize(text) == expected
    normalized, offsets = normalize_with_offsets(text)
    assert normalized == expected
    assert len(offsets) == len(normalized)


# The default pack must catch the reports the spine promises and stay quiet on everyday chat.
DEFAULT_CASES = [
    ("楼道闻到一股烟焦味!", "fire"),
    ("一个三四岁的小男孩光着脚在外到处找妈妈", "lost_child"),
    ("收到一条短信说法人信息到期", "scam"),
    ("有人拿裸聊视频威胁我转钱", "scam"),
    ("今晚吃火锅吗", "none"),
    ("孩子放学了", "none"),
]


@pytest.mark.parametrize(("text", "category"), DEFAULT_CASES)
def test_default_config_routes(text: str, category: str) -> None:
    router = Router(load_config(ROOT / "config.yaml"))
    assert router.classify(text, "jinxiu").category == category


ACTIVE = """\
station: {id: s1, name: 测试派出所}
officers:
  - {id: wang, name: 王警官, wechat_id: wxid_wang, role: community}
routes:
  - id: night_noise
    category: noise
    active: [{days: daily, start: "22:00", end: "06:00"}]
    match: {any: [噪音]}
"""


@pytest.mark.parametrize(
    ("local", "expected"),
    [("2026-11-28 23:00", ["night_noise"]), ("2026-11-29 05:59", ["night_noise"]), ("2026-11-28 12:00", [])],
)
def test_active_hours(local: str, expected: list[str]) -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    router = Router(parse_config(ACTIVE))
    at = datetime.fromisoformat(local).replace(tzinfo=ZoneInfo("Asia/Shanghai"))
    assert [m.route.id for m in router.classify("楼上噪音", None, at).matches] == expected


def test_shipped_route_expectations_pass_through_the_cli() -> None:
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "config.yaml"), "route", "--test",
         str(ROOT / "tests" / "data" / "default_routes_test.yaml")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 failed" in result.stdout


def test_route_test_reports_a_mismatch_with_its_line(tmp_path: object) -> None:
    import subprocess
    import sys
    from pathlib import Path

    expectations = Path(str(tmp_path)) / "expect.yaml"
    expectations.write_text('- {text: "今晚吃火锅吗", category: none}\n- {text: "今晚吃火锅吗", category: fire}\n',
                            encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(ROOT / "main.py"), "route", "--config", str(ROOT / "config.yaml"), "--test",
         str(expectations)],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 1
    assert f"FAIL {expectations}:2:" in result.stdout
    assert "1 passed, 1 failed" in result.stdout


def test_route_jsonl_cli() -> None:
    import json
    import subprocess
    import sys

    stdin = '{"id": 7, "text": "楼道闻到一股烟焦味!"}\n今晚吃火锅吗\n{"id": "x", "text": "有人拿裸 聊视频威胁我转钱"}\n'
    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--config", str(ROOT / "config.yaml"), "route",
                             "--jsonl"], input=stdin, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0] == {"id": 7, "category": "fire", "route": "fire", "severity": "P1"}
    assert rows[1] == {"id": None, "category": "none", "route": None, "severity": None}
    assert rows[2]["category"] == "scam" and rows[2]["id"] == "x"


def test_route_explain_cli_names_keywords_and_who_is_pinged() -> None:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, str(ROOT / "main.py"), "route", "--config", str(ROOT / "config.yaml"),
                             "--group", "fangdian", "--at", "2026-11-28 23:00", "楼道闻到一股烟 焦味!"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "route fire" in result.stdout and "severity P1" in result.stdout
    assert "烟焦味" in result.stdout
    assert "李警官" in result.stdout  # Saturday night: the duty officer


# -- the fast paths must agree with the plain definitions -------------------------------------------------


def test_normalize_table_agrees_with_the_reference_for_every_character() -> None:
    from handlers.normalize import _reference

    codes = [*range(0x20000), *range(0x20000, 0x110000, 61)]  # every BMP/SMP character, a sample beyond
    wrong = [hex(c) for c in codes if normalize(chr(c)) != _reference(chr(c))]
    assert not wrong, wrong[:20]


def test_normalize_table_agrees_with_the_reference_on_mixed_text() -> None:
    import random

    import yaml

    from handlers.normalize import _reference

    rng = random.Random(5)
    pools = [
        # simplified, traditional, phrase-level OpenCC cases
        "着火了孩子走丢刷单转账验证码乾隆萬歲國際轉賬著作",
        "ＡＢＣａｂｃ１２３！？，。（）【】　 \t\n_-.",  # full-width forms, punctuation, whitespace
        "ABCxyzÉéßﬁ①⑴㈱½ⅫΣς",  # case, ligatures, compatibility forms
        # Hangul jamo, kana voicing, combining marks
        "가각\u1100\u1161\u11a8\u3131カ\uff76\uff9e\u3099\u0301\u0308e",
        # emoji, tags, beyond the table
        "😀🔥👍\u200d\ufe0f\U0001f1e8\U0001f1f3\U000e0067\U00020000\U0002f800",
    ]
    texts = [str(item["text"]) for item in yaml.safe_load(
        (ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))]
    texts += ["".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 16))) for _ in range(20000)]
    wrong = [t for t in texts if normalize(t) != _reference(t)]
    assert not wrong, wrong[:10]


def _gate_passes(pattern: str, text: str) -> bool:
    """What the router's gate decides for a pattern on a normalised text (literals normalised, too)."""
    from handlers.regex_factors import required_alternatives

    alternatives = required_alternatives(pattern)
    return not alternatives or any(
        all(any((normalize(f) or f) in text for f in clause) for clause in clauses)
        for clauses in alternatives
    )


def _pattern_pieces(pattern: str) -> list[str]:
    """Literal runs and class characters of a pattern: material for texts that match it."""
    from re import _parser as sre_parse  # type: ignore[attr-defined]

    pieces: list[str] = []

    def walk(items: object) -> None:
        run = ""
        for op, arg in items:  # type: ignore[attr-defined]
            name = str(op)
            if name == "LITERAL":
                run += chr(arg)
                continue
            if run:
                pieces.append(run)
                run = ""
            if name == "IN":
                pieces.extend(chr(v) for kind, v in arg if str(kind) == "LITERAL")
            elif name in ("SUBPATTERN",):
                walk(arg[-1])
            elif name == "BRANCH":
                for branch in arg[1]:
                    walk(branch)
            elif name in ("MAX_REPEAT", "MIN_REPEAT", "POSSESSIVE_REPEAT"):
                walk(arg[2])
            elif name in ("ASSERT", "ASSERT_NOT"):
                walk(arg[1])
        if run:
            pieces.append(run)

    walk(sre_parse.parse(pattern))
    return pieces or ["x"]


TRICKY_PATTERNS = [
    "(在|又在|正在)打(人|他)", "被人?(拿|偷)(了|走)", "a{2}b?c", "(ab|cd)?ef", "x(?=.*y)z", "(?<=前)后",
    "^(?=.*(甲|乙))(?=.*丙)", "((红|绿)(灯|色)){1,2}", "(?i)QQ号", "火(光|舌)|引燃|还有火(?!锅)",
    "[^打]{0,3}打我",
    "(a|b.*)c", "x|.*", "\\d{3}验证码", "(?:快递|包裹).{0,4}(丢|没)了",
]


def test_regex_gates_never_skip_a_regex_that_would_match() -> None:
    import random
    import re

    import yaml

    rng = random.Random(9)
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    patterns = list(TRICKY_PATTERNS)

    def collect(routes: list) -> None:  # type: ignore[type-arg]
        for route in routes:
            patterns.extend(route.get("match", {}).get("regex", []))
            collect(route.get("routes", []))

    collect(data["routes"])
    labelled = [normalize(str(item["text"])) for item in yaml.safe_load(
        (ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))]
    matched = 0
    for pattern in patterns:
        compiled = re.compile(pattern)
        pieces = _pattern_pieces(pattern)
        fillers = ["", "", "x", "的", "1"]
        texts = labelled + [
            normalize("".join(rng.choice(pieces) + rng.choice(fillers) for _ in range(rng.randint(1, 8))))
            for _ in range(400)
        ]
        for text in texts:
            if compiled.search(text):
                matched += 1
                assert _gate_passes(pattern, text), (pattern, text)
    assert matched > 2000  # the texts do exercise the patterns


def _reference_decision(
    config: object, text: str, group_id: str | None, at: object
) -> list[tuple[str, tuple[str, ...]]]:
    """The routing semantics written plainly: every route, every keyword by substring, every regex run."""
    import re
    from functools import cache
    from zoneinfo import ZoneInfo

    norm = normalize(text)
    local = at.astimezone(ZoneInfo(config.timezone)) if at is not None else None  # type: ignore[attr-defined]

    @cache
    def has(word: str) -> bool:
        return (normalize(word) or word) in norm

    def tree(route: object, groups: list[str], active: list[object]) -> tuple[str, tuple[str, ...]] | None:
        groups = route.groups or groups  # type: ignore[attr-defined]
        active = route.active or active  # type: ignore[attr-defined]
        match = route.match  # type: ignore[attr-defined]
        if groups and group_id not in groups:
            return None
        if active and local is not None and not any(w.covers(local) for w in active):  # type: ignore[attr-defined]
            return None
        if any(has(w) for w in match.exclude):
            return None
        own = None
        if match.any or match.all or match.regex:
            regex_hits = tuple(found.group(0) for p in match.regex if (found := re.search(p, norm)))[:1]
            all_present = bool(match.all) and all(any(has(w) for w in g) for g in match.all)
            if not (any(has(w) for w in match.any) or all_present or regex_hits):
                return None
            own = (route.id, regex_hits)  # type: ignore[attr-defined]
        for child in route.routes:  # type: ignore[attr-defined]
            found = tree(child, groups, active)
            if found is not None:
                return found
        return own

    out = []
    for top in config.routes:  # type: ignore[attr-defined]
        found = tree(top, [], [])
        if found is not None:
            out.append(found)
            if not top.continue_:
                break
    return out


def test_router_agrees_with_the_plain_semantics() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    import yaml

    texts = [str(item["text"]) for item in yaml.safe_load(
        (ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))]
    texts += [" ".join(t) for t in texts[::7]]  # spaced-out variants
    zone = ZoneInfo("Asia/Shanghai")
    cases = [
        (load_config(ROOT / "config.yaml"), texts, ["jinxiu", None], [None]),
        (parse_config(TREE), [text for text, _, _ in CASES] + ["孩子走丢 刷单返利 噪音"], ["g1", "g2", None],
         [None]),
        (parse_config(ACTIVE), ["楼上噪音", "噪音", ""], [None], [
            None, datetime(2026, 11, 28, 23, 0, tzinfo=zone), datetime(2026, 11, 28, 12, 0, tzinfo=zone)]),
    ]
    for config, messages, groups, times in cases:
        router = Router(config)
        for text in messages:
            for group in groups:
                for at in times:
                    expected = _reference_decision(config, text, group, at)
                    decision = router.classify(text, group, at)
                    got = [(m.route.id, m.regex_hits) for m in decision.matches]
                    assert got == expected, (text, group, at)
                    explained, _ = router.explain(text, group, at)
                    assert [m.route.id for m in explained.matches] == [route for route, _ in expected]


def test_fast_decision_objects_are_ordinary_frozen_dataclasses() -> None:
    import dataclasses

    from handlers.routing import Decision, _decision

    fast = _decision("abc", (), ())
    assert fast == Decision("abc", ()) and hash(fast) == hash(Decision("abc", ()))
    assert fast.first is None and fast.category == "none"
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.normalized = "x"  # type: ignore[misc]
    assert dataclasses.replace(fast, normalized="x").normalized == "x"


def test_every_canonical_composition_second_half_is_a_mark() -> None:
    """normalize's table relies on it: a character whose NFKC form has no mark cannot fuse with others."""
    import unicodedata

    seconds = set()
    for code in range(0x110000):
        decomposition = unicodedata.decomposition(chr(code))
        if decomposition and not decomposition.startswith("<") and len(decomposition.split()) == 2:
            seconds.add(chr(int(decomposition.split()[1], 16)))
    assert seconds and all(unicodedata.category(c).startswith("M") for c in seconds)
