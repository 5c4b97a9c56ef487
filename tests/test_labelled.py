"""The default rule pack against a labelled set of realistic group messages (tests/data/labelled_messages.yaml):
precision and recall floors per category, and the confusion table printed for whoever reads the log.

The set was written together with the rules, so these figures are optimistic; the floors guard against a
rule edit that silently breaks a category or starts firing on everyday chat.
"""

from __future__ import annotations

from collections import Counter

import pytest
import yaml

from bot.config.loader import load_config
from handlers.routing import Router
from tests.conftest import ROOT

PRECISION_FLOOR = 0.9
RECALL_FLOOR = 0.9
HARD_NEGATIVE_FALSE_ALARMS_MAX = 0.03


@pytest.fixture(scope="module")
def results() -> list[tuple[dict[str, object], str, str | None]]:
    router = Router(load_config(ROOT / "config.yaml"))
    items = yaml.safe_load((ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))
    out = []
    for item in items:
        decision = router.classify(str(item["text"]), "jinxiu")
        out.append((item, decision.category, decision.first.route.id if decision.first else None))
    return out


def test_labelled_set_is_big_enough(results: list[tuple[dict[str, object], str, str | None]]) -> None:
    assert len(results) >= 300
    assert sum(1 for item, _, _ in results if item.get("hard")) >= 100


def test_precision_and_recall_per_category(results: list[tuple[dict[str, object], str, str | None]]) -> None:
    confusion: Counter[tuple[str, str]] = Counter((str(item["category"]), got) for item, got, _ in results)
    categories = sorted({c for pair in confusion for c in pair})
    width = max(len(c) for c in categories) + 1
    print("\nconfusion (rows: labelled, columns: routed)")
    print(" " * width + " ".join(f"{c[:6]:>6}" for c in categories))
    for want in categories:
        print(f"{want:<{width}}" + " ".join(f"{confusion[(want, got)]:>6}" for got in categories))
    failures = []
    for category in categories:
        if category == "none":
            continue
        true_pos = confusion[(category, category)]
        routed = sum(confusion[(want, category)] for want in categories)
        labelled = sum(confusion[(category, got)] for got in categories)
        precision = true_pos / routed if routed else 1.0
        recall = true_pos / labelled if labelled else 1.0
        print(f"{category:<{width}} precision {precision:.3f} recall {recall:.3f} (n={labelled})")
        if precision < PRECISION_FLOOR or recall < RECALL_FLOOR:
            failures.append(f"{category}: precision {precision:.3f}, recall {recall:.3f}")
    assert not failures, failures


def test_hard_negatives_stay_quiet(results: list[tuple[dict[str, object], str, str | None]]) -> None:
    hard = [(item, got) for item, got, _ in results if item.get("hard")]
    alarms = [(item["text"], got) for item, got in hard if got != "none"]
    print("\nhard negatives that fired:", alarms)
    assert len(alarms) / len(hard) <= HARD_NEGATIVE_FALSE_ALARMS_MAX, alarms


def test_scam_subtypes(results: list[tuple[dict[str, object], str, str | None]]) -> None:
    scams = [(item, route) for item, got, route in results if item["category"] == "scam" and item.get("subtype")]
    wrong = [
        (item["text"], item["subtype"], route)
        for item, route in scams
        if not (route or "").startswith(f"scam_{item['subtype']}")
    ]
    assert len(wrong) / len(scams) <= 0.1, wrong
