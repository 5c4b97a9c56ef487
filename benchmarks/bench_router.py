"""How fast is the whole classify step (normalise, match, evaluate routes)?

Run:  python benchmarks/bench_router.py [--messages 20000] [--repeat 3]

For 1,000 and 20,000 keywords it reports, in one run on the same messages:
  * classify:  Router.classify, exactly what production calls per message (normalisation included);
  * naive:     a per-route `any(k in text for k in keywords)` loop over the same routes (no normalisation);
  * floor:     a Python loop calling a no-op per message: the ceiling any per-message Python code meets;
and the automaton build time and the memory the compiled rules hold (tracemalloc).
Messages: the project's labelled set (tests/data/labelled_messages.yaml) and variations of it, 5-200 chars.
Keywords beyond the default pack are random 2-4 character Chinese words in extra routes.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
import tracemalloc
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config.loader import parse_config  # noqa: E402
from handlers.routing import Router  # noqa: E402

COMMON = "的一是了我不人在他有这个上们来到时大地为子中你说生国年着就那和要她出也得里后自以会家可下而过天去能对小多然于心学么之都好看起发当没成只如事把还用第样道想作种开美总从无情己面最女但现前些所同日手又行意动方期它头经长儿回位分爱老因很给名法间斯知世什两次使身者被高已亲其进此话常与活正感"


def messages(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    labelled = yaml.safe_load((ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))
    base = [str(item["text"]) for item in labelled]
    out = []
    while len(out) < count:
        text = rng.choice(base)
        roll = rng.random()
        if roll < 0.3:  # longer messages: two or three joined, as residents run on
            text = text + "，" + rng.choice(base) + ("。" + rng.choice(base) if rng.random() < 0.3 else "")
        elif roll < 0.4:
            text = "".join(rng.choice(COMMON) for _ in range(rng.randint(5, 40)))
        out.append(text[:200])
    return out


def config_with_keywords(total: int, seed: int = 11) -> tuple[str, int]:
    rng = random.Random(seed)
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    router = Router(parse_config(yaml.safe_dump(data, allow_unicode=True)))
    have = router.keyword_count
    extra: set[str] = set()
    while len(extra) < max(0, total - have):
        extra.add("".join(rng.choice(COMMON) for _ in range(rng.randint(2, 4))))
    words = sorted(extra)
    per_route = 200
    for index in range(0, len(words), per_route):
        data["routes"].append({
            "id": f"extra_{index // per_route}", "category": "other_police",
            "match": {"any": words[index:index + per_route], "exclude": ["演习"]},
        })
    return yaml.safe_dump(data, allow_unicode=True), len(words)


def naive_routes(config_text: str) -> list[tuple[str, list[str], list[str]]]:
    """Each route's keywords, flattened; the naive loop tests them per route per message."""
    config = parse_config(config_text)
    flat = []

    def walk(routes: list) -> None:  # type: ignore[type-arg]
        for route in routes:
            words = list(route.match.any) + [w for group in route.match.all for w in group]
            flat.append((route.id, words, list(route.match.exclude)))
            walk(route.routes)

    walk(config.routes)
    return flat


def rate(fn, items: list[str], repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn(items)
        best = min(best, time.perf_counter() - start)
    return len(items) / best


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    texts = messages(args.messages)
    lengths = sorted(len(t) for t in texts)
    print(f"{len(texts)} messages, length median {lengths[len(lengths) // 2]}, max {lengths[-1]}; "
          f"Python {sys.version.split()[0]}")
    print(f"{'keywords':>9} {'build s':>8} {'rules MB':>9} {'classify/s':>11} {'naive/s':>9} {'floor/s':>10} "
          f"{'x naive':>8} {'matched':>8}")
    for target in (1000, 20000):
        text, _ = config_with_keywords(target)
        config = parse_config(text)
        tracemalloc.start()
        started = time.perf_counter()
        router = Router(config)
        build = time.perf_counter() - started
        memory = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()

        def classify_all(items: list[str], router: Router = router) -> None:
            classify = router.classify
            for item in items:
                classify(item, "jinxiu")

        routes = naive_routes(text)

        def naive_all(items: list[str], routes: list = routes) -> None:  # type: ignore[type-arg]
            for item in items:
                for _route_id, words, exclude in routes:
                    if any(w in item for w in words) and not any(x in item for x in exclude):
                        break

        def noop(_item: str) -> None:
            return None

        def floor_all(items: list[str]) -> None:
            for item in items:
                noop(item)

        classify_rate = rate(classify_all, texts, args.repeat)
        naive_sample = texts[: max(200, len(texts) // (50 if target > 5000 else 5))]
        naive_rate = rate(naive_all, naive_sample, 1)
        floor_rate = rate(floor_all, texts, args.repeat)
        matched = sum(1 for t in texts if router.classify(t, "jinxiu").matches)
        print(f"{router.keyword_count:>9} {build:>8.3f} {memory:>9.1f} {classify_rate:>11,.0f} {naive_rate:>9,.0f} "
              f"{floor_rate:>10,.0f} {classify_rate / naive_rate:>8.0f} {matched / len(texts):>8.1%}")


if __name__ == "__main__":
    main()
