"""How fast is the whole classify step (normalise, match, evaluate routes)?

Run:  python benchmarks/bench_router.py [--messages 50000] [--repeat 5] [--keywords 1000,20000]

For 1,000 and 20,000 keywords it reports, in one run on the same messages:
  * build:     Router(config) wall time (normalising keywords, compiling regexes, building the automaton),
               and the Aho-Corasick construction alone;
  * memory:    what the compiled rules hold: the router's Python objects (tracemalloc) and the
               automaton's native (Rust) memory, which tracemalloc cannot see (RSS growth of building
               it alone in a fresh process);
  * classify:  Router.classify(text, group, sent_at), exactly what the pipeline calls per message
               (normalisation included);
  * naive:     a per-route `any(k in text for k in keywords)` loop over the same routes (no normalisation,
               no regexes), timed on a sample because it is slow;
  * floor:     a Python loop calling a no-op per message: the ceiling any per-message Python code meets;
  * stages:    normalize() alone, normalize() + the automaton scan, and the whole classify, in µs/message.

Messages (generated with a fixed seed, almost all unique, like production traffic):
  * chat mix:    what a residents' group looks like: 90% everyday chit-chat generated from a phrase bank
                 (slots for names, buildings, rooms, prices, times, emoji, run-on sentences), 6% varied
                 hard negatives / notices from the labelled set (火锅, 孩子放学了, 反诈提醒…),
                 4% varied reports;
  * reports mix: the worst case: 70% varied reports and 30% varied hard negatives from the labelled set.
"Varied" = labelled text with its digits redrawn, a random lead-in or tail, emoji, sometimes a chat clause
joined on, so the router never sees the same string twice by construction.

Keywords beyond the default pack are 2-6 character words whose characters are drawn uniformly from the
3,755 GB2312 level-1 (common) characters, 200 per extra route. Unlike words made only of the ~150 most
frequent characters, they rarely occur in chit-chat by accident (the "extra hit" column reports how often),
which is what real admin-written keywords do.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import time
import tracemalloc
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import handlers.normalize  # noqa: E402
from bot.config.loader import parse_config  # noqa: E402
from handlers.normalize import normalize  # noqa: E402
from handlers.routing import Router  # noqa: E402

# ----------------------------------------------------------------------------------------- messages
NAMES = [
    "王姐", "小李", "陈阿姨", "老周", "张师傅", "刘老师", "小美", "赵叔", "阿强", "孙阿婆", "吴先生",
    "小徐", "黄姐", "马大爷", "林林", "朱阿姨", "胡老师", "郭哥", "何姐", "高老板", "罗阿姨", "梁子",
    "宋姐", "唐叔",
]
PLACES = [
    "菜场", "超市", "地铁站", "公园", "社区医院", "银行", "邮局", "菜鸟驿站", "物业办公室", "小区门口",
    "健身房", "图书馆", "游泳馆", "社区食堂", "理发店", "药店", "幼儿园门口", "篮球场", "南门", "北门",
    "便利店", "菜鸟站", "奶茶店", "面馆", "花鸟市场", "社区活动室", "老年活动中心", "停车场",
]
THINGS = [
    "鸡蛋", "大米", "牛奶", "青菜", "苹果", "车厘子", "西瓜", "草莓", "面包", "猪肉", "大闸蟹", "粽子",
    "月饼", "汤圆", "土豆", "番茄", "黄瓜", "水饺", "酸奶", "橙子", "葡萄", "荔枝", "馄饨", "小笼包",
    "豆浆", "咖啡", "抽纸", "洗衣液", "花生油", "酱油", "香蕉", "桃子", "春卷", "生煎",
]
TIMES = [
    "明天上午", "今晚七点", "周六下午", "后天", "下周一", "今天中午", "明早八点", "周日上午",
    "晚上九点", "这周末", "下午三点", "明天傍晚", "月底", "国庆前", "下周三晚上", "今天下午",
]
PARTICLES = [
    "", "", "", "啊", "呀", "哦", "吧", "呢", "哈", "~", "!!", "？", "。", "！", "哈哈", "嘛", "啦",
]
EMOJI = [
    "", "", "", "", "👍", "😂", "🙏", "😊", "👌", "[捂脸]", "[呲牙]", "[强]", "[玫瑰]", "🌹", "😄",
    "[抱拳]", "🎉", "❤️", "[偷笑]", "😓", "[OK]", "☀️",
]
CLAUSES = [
    "{time}{place}人多吗", "有没有人{time}一起去{place}", "团购的{thing}到了 在{n}号楼门口自取",
    "{name} 你家{thing}还要吗", "请问{place}几点关门", "今天{thing}{price}一斤 好便宜",
    "{n}号楼电梯又坏了 物业什么时候修", "谁家的快递放错了 {room}的 在我家门口",
    "明天停电吗 看到通知说{n}号楼要检修", "收到 谢谢{name}", "好的", "哈哈哈哈",
    "早上好 今天降温了 大家多穿点", "{room}的邻居 你家车挡住我车了 麻烦挪一下",
    "有没有人知道附近哪里修手机", "晚上{place}有活动 可以去看看", "小区里的桂花开了 好香",
    "物业费交了吗 {time}截止", "垃圾分类 {thing}的包装放哪个桶", "楼下的猫又生了一窝小猫 有人要领养吗",
    "谁有打气筒 借我用一下", "{place}排队好长", "明天下雨 记得收衣服", "大家{time}有空吗 业委会开会",
    "这个{thing}在哪里买的 看着不错", "我家{thing}买多了 {price}转给需要的邻居",
    "有没有修水管的师傅电话", "{name}生日快乐🎂", "恭喜恭喜", "辛苦了", "谢谢大家", "@{name} 收到了吗",
    "群里有人卖二手婴儿车吗", "{time}社区有免费体检 带上身份证", "地铁{n}号线今天好挤",
    "周末去哪里玩 有推荐吗", "家里网络断了 是不是都断了", "{place}新开了一家店 {thing}蛮好吃的",
    "今天空气不错 去{place}走走", "{thing}团购还有吗 我要两份", "{room}拼单{thing} 还差三份",
    "请问{place}现在开门了吗", "我家阳台的衣服被风吹到楼下了 {n}号楼下面 麻烦帮忙看一下",
    "有谁知道{place}的营业时间", "明天几点收垃圾", "小区的快递柜满了", "今年的{thing}比去年贵",
    "{name}做的{thing}太好吃了", "谁家装修这么早就开始了", "{time}有人一起打羽毛球吗",
    "楼道的灯不亮了", "水费怎么交 线上可以吗", "有没有推荐的钢琴老师", "孩子放学了 我去接一下",
    "周末带娃去{place}", "今天{place}有打折 {thing}{price}", "下载了物业的小程序 报修方便多了",
    "我家wifi名字叫{name}家 信号好差", "有人去{place}吗 帮我带一份{thing}", "物业说{time}修电梯",
    "业主大会的投票别忘了", "{n}号楼的车位还有出租的吗", "阿拉今朝去{place}白相",
    "侬晓得{place}几点开门伐", "天气好热 空调开了一整天", "今天最高{n}度", "谢谢{name}帮我收快递",
    "辛苦保安师傅了", "小区绿化修剪得真好", "{name}家的狗狗好可爱", "晚饭吃{thing}",
    "求推荐靠谱的家政阿姨", "{time}{place}有义诊", "好的 知道了", "明白", "收到收到", "大家早点休息",
    "晚安", "早", "这个群好热闹", "有人知道快递柜怎么取件吗", "二手书谁要 免费送",
    "社区通知{time}打疫苗的可以去登记", "请问{room}是哪位邻居", "我在{place} 马上回来",
]


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        name=rng.choice(NAMES), place=rng.choice(PLACES), thing=rng.choice(THINGS), time=rng.choice(TIMES),
        n=rng.randint(1, 32),
        room=f"{rng.randint(1, 32)}号{rng.randint(1, 28)}0{rng.randint(1, 4)}",
        price=rng.choice([
            f"{rng.randint(2, 98)}块", f"{rng.randint(2, 98)}元", f"{rng.randint(1, 30)}.{rng.randint(1, 9)}",
        ]),
    )


def chat_clause(rng: random.Random) -> str:
    return _fill(rng, rng.choice(CLAUSES)) + rng.choice(PARTICLES) + rng.choice(EMOJI)


def chit_chat(rng: random.Random) -> str:
    roll = rng.random()
    count = 1 if roll < 0.55 else 2 if roll < 0.85 else rng.randint(3, 5)
    return rng.choice([" ", "，", "。", " ", ""]).join(chat_clause(rng) for _ in range(count))[:200]


LEADS = [
    "", "", "", "@花木派出所公号 ", "各位邻居 ", "急！", "大家注意 ", "刚才 ", "请问 ", "有人知道吗 ",
    "紧急 ",
]
TAILS = [
    "", "", "", " 大家注意", "！！", "[流泪]", " 😭", "。谢谢", " 怎么办", " 大家小心", "？",
    " 在线等",
]


def vary(rng: random.Random, text: str) -> str:
    text = "".join(str(rng.randint(0, 9)) if c.isdigit() and c.isascii() else c for c in text)
    text = rng.choice(LEADS) + text + rng.choice(TAILS) + rng.choice(EMOJI)
    roll = rng.random()
    if roll < 0.15:
        text = chat_clause(rng) + " " + text
    elif roll < 0.3:
        text = text + "，" + chat_clause(rng)
    return text[:200]


def labelled() -> tuple[list[str], list[str]]:
    items = yaml.safe_load((ROOT / "tests" / "data" / "labelled_messages.yaml").read_text(encoding="utf-8"))
    reports = [str(i["text"]) for i in items if i["category"] != "none"]
    quiet = [str(i["text"]) for i in items if i["category"] == "none"]
    return reports, quiet


def chat_mix(count: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    reports, quiet = labelled()
    out = []
    for _ in range(count):
        roll = rng.random()
        if roll < 0.04:
            out.append(vary(rng, rng.choice(reports)))
        elif roll < 0.10:
            out.append(vary(rng, rng.choice(quiet)))
        else:
            out.append(chit_chat(rng))
    return out


def reports_mix(count: int, seed: int = 8) -> list[str]:
    rng = random.Random(seed)
    reports, quiet = labelled()
    return [vary(rng, rng.choice(reports if rng.random() < 0.7 else quiet)) for _ in range(count)]


# ----------------------------------------------------------------------------------------- keywords
def gb2312_level1() -> str:
    chars = []
    for row in range(0xB0, 0xD8):
        for col in range(0xA1, 0xFF):
            try:
                chars.append(bytes([row, col]).decode("gb2312"))
            except UnicodeDecodeError:
                continue
    return "".join(chars)


def written_keywords(config_text: str) -> int:
    """Distinct keywords the admin wrote (any, all, exclude), regex literals not counted."""
    words: set[str] = set()

    def walk(routes: list) -> None:  # type: ignore[type-arg]
        for route in routes:
            words.update(route.match.any, route.match.exclude, *route.match.all)
            walk(route.routes)

    walk(parse_config(config_text).routes)
    return len(words)


def config_with_keywords(total: int, seed: int = 11) -> str:
    """The default pack plus extra routes of random words, ``total`` written keywords in all."""
    rng = random.Random(seed)
    pool = gb2312_level1()
    data = yaml.safe_load((ROOT / "config.yaml").read_text(encoding="utf-8"))
    have = written_keywords(yaml.safe_dump(data, allow_unicode=True))
    extra: set[str] = set()
    while len(extra) < max(0, total - have):
        length = rng.choices([2, 3, 4, 5, 6], weights=[30, 30, 25, 10, 5])[0]
        extra.add("".join(rng.choice(pool) for _ in range(length)))
    words = sorted(extra)
    per_route = 200
    for index in range(0, len(words), per_route):
        data["routes"].append({
            "id": f"extra_{index // per_route}", "category": "other_police",
            "match": {"any": words[index:index + per_route], "exclude": ["演习"]},
        })
    return yaml.safe_dump(data, allow_unicode=True)


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


SENT_AT = datetime(2026, 11, 28, 23, 0, tzinfo=ZoneInfo("Asia/Shanghai"))  # what the pipeline passes along


# ----------------------------------------------------------------------------------------- timing
CLOCK = time.process_time  # --clock: CPU time of this process (default) or wall time


def rate(fn: Callable[[list], object], items: list, repeat: int, chunk: int = 1000) -> float:  # type: ignore[type-arg]
    """Messages per second: each chunk of ``chunk`` messages timed ``repeat`` times, the best time kept.

    Best-of per chunk (rather than per whole run) filters out what other processes on a shared machine
    steal from a run, without hiding anything the code itself does: every message is timed. The default
    clock is this process's CPU time, which other processes cannot inflate by taking the core away.
    """
    total = 0.0
    for offset in range(0, len(items), chunk):
        part = items[offset:offset + chunk]
        best = float("inf")
        for _ in range(repeat):
            start = CLOCK()
            fn(part)
            best = min(best, CLOCK() - start)
        total += best
    return len(items) / total


def machine() -> str:
    from machine_info import cpu_model

    model = cpu_model()
    import importlib.metadata as md

    return (f"machine: {platform.machine()}, nproc {os.cpu_count()}, CPU {model}; {platform.platform()}\n"
            f"Python {sys.version.split()[0]} ({platform.python_implementation()}), "
            f"ahocorasick-rs {md.version('ahocorasick_rs')}, OpenCC {md.version('OpenCC')}")


def extra_only(config_text: str) -> Router:
    """A router with only the generated routes: how often do random extra keywords fire on these messages?"""
    data = yaml.safe_load(config_text)
    data["routes"] = [r for r in data["routes"] if r["id"].startswith("extra_")] or [
        {"id": "none", "category": "none", "match": {"any": ["\x00"]}}
    ]
    return Router(parse_config(yaml.safe_dump(data, allow_unicode=True)))


def automaton_options(router: Router) -> dict[str, object]:
    """The options the router builds its automaton with."""
    import handlers.routing as routing

    options: dict[str, object] = {}
    if hasattr(routing, "_DFA_MAX_KEYWORDS"):  # the current router; older ones used the defaults
        options["store_patterns"] = True
        if len(router._keywords) <= routing._DFA_MAX_KEYWORDS:
            options["implementation"] = "DFA"
    return options


def automaton_cost(router: Router) -> tuple[float, float]:
    """Seconds and MB (RSS growth) to build the router's automaton alone, in a fresh process.

    A fresh process, because in this one the allocator hands the automaton memory freed earlier, and
    tracemalloc does not see native allocations at all.
    """
    import json
    import subprocess
    import tempfile

    script = """
import json, os, sys, time
import ahocorasick_rs
keywords, options = json.load(open(sys.argv[1], encoding="utf-8"))
if "implementation" in options:
    options["implementation"] = getattr(ahocorasick_rs.Implementation, options["implementation"])
def rss():
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
before = rss()
started = time.process_time()
automaton = ahocorasick_rs.AhoCorasick(keywords, matchkind=ahocorasick_rs.MatchKind.Standard, **options)
print(json.dumps([time.process_time() - started, (rss() - before) / 2**20]))
"""
    with tempfile.NamedTemporaryFile("w", suffix=".json", encoding="utf-8", delete=False) as handle:
        json.dump([router._keywords, automaton_options(router)], handle, ensure_ascii=False)
    try:
        out = subprocess.run([sys.executable, "-c", script, handle.name], capture_output=True, text=True,
                             check=True)
    finally:
        os.unlink(handle.name)
    seconds, mb = json.loads(out.stdout)
    return seconds, mb


def stage_breakdown(router: Router, mixes: dict[str, list[str]], repeat: int, keywords: int) -> list[str]:
    """Each stage of classify timed on its own (the current router's internals; see handlers/routing.py)."""
    from handlers.routing import _decision

    lines = []
    for name, texts in mixes.items():
        normalized = [normalize(t) for t in texts]
        found = [router._find_words(n, True) for n in normalized]
        index = router._keyword_index
        pairs = list(zip(normalized, found, strict=True))
        with_hits = [(n, {index[w] for w in f}) for n, f in pairs if f]
        without = [n for n, f in pairs if not f]

        def scan(items: list[str]) -> None:
            find = router._find_words
            for item in items:
                find(item, True)

        def decide(items: list[tuple[str, set[int]]]) -> None:
            run = router._decide
            for text, present in items:
                run(text, present, "jinxiu", SENT_AT, None)

        def empty(items: list[str]) -> None:
            for item in items:
                _decision(item, (), ())

        def normalize_all(items: list[str]) -> None:
            for item in items:
                normalize(item)

        share = len(with_hits) / len(texts)
        norm_us = 1e6 / rate(normalize_all, texts, repeat)
        scan_us = 1e6 / rate(scan, normalized, repeat)
        decide_us = 1e6 / rate(decide, with_hits, repeat) if with_hits else 0.0  # type: ignore[arg-type]
        empty_us = 1e6 / rate(empty, without, repeat) if without else 0.0
        total = norm_us + scan_us + share * decide_us + (1 - share) * empty_us
        lines.append(
            f"  {keywords:>6} kw, {name:>7}: normalize {norm_us:.2f} | scan {scan_us:.2f} | "
            f"{share:.0%} with hits: decide {decide_us:.2f} | {1 - share:.0%} without: result {empty_us:.2f} "
            f"| weighted sum {total:.2f}"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=50000, help="messages per mix")
    parser.add_argument("--repeat", type=int, default=5, help="runs per chunk of 1,000 messages; best kept")
    parser.add_argument("--keywords", default="1000,20000", help="comma-separated keyword counts")
    parser.add_argument("--profile", action="store_true", help="also cProfile classify at the last count")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="cpu: time.process_time (default; robust on a busy machine); wall: perf_counter")
    args = parser.parse_args()
    global CLOCK
    CLOCK = time.process_time if args.clock == "cpu" else time.perf_counter
    print("command: python " + " ".join(sys.argv))
    print(machine())
    mixes = {"chat": chat_mix(args.messages), "reports": reports_mix(args.messages)}
    for name, texts in mixes.items():
        lengths = sorted(len(t) for t in texts)
        slow = ""
        if hasattr(handlers.normalize, "_TABLE"):
            mark, table = handlers.normalize._MARK, handlers.normalize._TABLE
            slow = f", {sum(mark in t.translate(table) for t in texts) / len(texts):.2%} take the OpenCC path"
        print(f"{name} mix: {len(texts)} messages, {len(set(texts)) / len(texts):.1%} unique, "
              f"length median {lengths[len(lengths) // 2]}, p90 {lengths[len(lengths) * 9 // 10]}, "
              f"max {lengths[-1]}{slow}")
    if hasattr(handlers.normalize, "_TABLE"):
        table = handlers.normalize._TABLE
        distinct = {id(v): v for v in table if v is not None}
        table_mb = (sys.getsizeof(table) + sum(sys.getsizeof(v) for v in distinct.values())) / 2**20
        print(f"normalisation table (module-level, one per process): {len(table):,} slots, {table_mb:.1f} MB")

    def noop(_item: str) -> None:
        return None

    def floor_all(items: list[str]) -> None:
        for item in items:
            noop(item)

    def normalize_all(items: list[str]) -> None:
        for item in items:
            normalize(item)

    floor = {name: rate(floor_all, texts, args.repeat) for name, texts in mixes.items()}
    norm = {name: rate(normalize_all, texts, args.repeat) for name, texts in mixes.items()}

    rows = []
    breakdown: list[str] = []
    for target in (int(k) for k in args.keywords.split(",")):
        text = config_with_keywords(target)
        config = parse_config(text)
        started = CLOCK()
        router = Router(config)
        build = CLOCK() - started
        tracemalloc.start()  # a second build, for what its Python objects hold (tracing slows it down)
        traced = Router(config)
        python_mb = tracemalloc.get_traced_memory()[0] / 2**20
        tracemalloc.stop()
        del traced
        automaton, automaton_mb = automaton_cost(router)
        extra = extra_only(text)
        routes = naive_routes(text)
        # The automaton call classify makes (older routers: the only one they had).
        find = getattr(router, "_find_words", None) or router._automaton.find_matches_as_indexes

        def classify_all(items: list[str], router: Router = router) -> None:
            classify = router.classify
            for item in items:
                classify(item, "jinxiu", SENT_AT)

        def scan_all(items: list[str], find: Callable[[str, bool], object] = find) -> None:
            for item in items:
                find(normalize(item), True)

        def naive_all(items: list[str], routes: list = routes) -> None:  # type: ignore[type-arg]
            for item in items:
                for _route_id, words, exclude in routes:
                    if any(w in item for w in words) and not any(x in item for x in exclude):
                        break

        for name, texts in mixes.items():
            classify_rate = rate(classify_all, texts, args.repeat)
            scan_rate = rate(scan_all, texts, args.repeat)
            sample = texts[: max(200, len(texts) // (100 if target > 5000 else 10))]
            naive_rate = rate(naive_all, sample, 3, chunk=50)
            matched = sum(1 for t in texts if router.classify(t, "jinxiu", SENT_AT).matches) / len(texts)
            extra_hit = sum(1 for t in texts if extra.classify(t).matches) / len(texts)
            rows.append({
                "keywords": written_keywords(text), "entries": router.keyword_count, "build": build,
                "automaton": automaton, "python_mb": python_mb, "ac_mb": automaton_mb, "mix": name,
                "classify": classify_rate, "naive": naive_rate, "floor": floor[name], "matched": matched,
                "extra_hit": extra_hit, "us_norm": 1e6 / norm[name], "us_scan": 1e6 / scan_rate,
            })
        if hasattr(router, "_find_words"):  # the current router: split the step into its stages
            breakdown.extend(stage_breakdown(router, mixes, args.repeat, written_keywords(text)))
        if args.profile and target == int(args.keywords.split(",")[-1]):
            import cProfile
            import pstats

            for name, texts in mixes.items():
                print(f"\ncProfile, classify, {name} mix, {router.keyword_count} automaton entries "
                      "(profiling inflates per-call costs; read the shares, not the times)")
                profiler = cProfile.Profile()
                profiler.runcall(classify_all, texts)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(10)

    print()
    print("keywords: written by the admin (any/all/exclude); AC: automaton entries (regex literals too)")
    print("build: Router(config), automaton included; AC s: the automaton alone; py MB: the router's")
    print("Python objects (tracemalloc); AC MB: the automaton's native memory (RSS growth when built alone")
    print("in a fresh process)")
    print(f"{'keywords':>8} {'AC':>6} {'build s':>7} {'AC s':>5} {'py MB':>6} {'AC MB':>6} {'mix':>7} "
          f"{'classify/s':>10} {'naive/s':>8} {'x naive':>7} {'floor/s':>10} {'matched':>7} {'extra hit':>9}")
    for r in rows:
        print(f"{r['keywords']:>8} {r['entries']:>6} {r['build']:>7.3f} {r['automaton']:>5.3f} "
              f"{r['python_mb']:>6.1f} {r['ac_mb']:>6.1f} {r['mix']:>7} {r['classify']:>10,.0f} "
              f"{r['naive']:>8,.0f} {r['classify'] / r['naive']:>7.0f} {r['floor']:>10,.0f} "
              f"{r['matched']:>7.1%} {r['extra_hit']:>9.1%}")
    if breakdown:
        print()
        print("where the time goes, µs per message (each stage timed alone on its own input):")
        print("  normalize | automaton call on the normalised text | keyword hits -> decision, for the")
        print("  messages with a hit (routes, gates, regexes, result objects) | the result object of a")
        print("  message without one; the weighted sum leaves out the calls between stages")
        for line in breakdown:
            print(line)
    print()
    print("µs per message, cumulative: floor (loop + call), normalize, + automaton scan, whole classify")
    print(f"{'keywords':>8} {'mix':>7} {'floor':>6} {'norm':>6} {'+scan':>6} {'classify':>8}")
    for r in rows:
        print(f"{r['keywords']:>8} {r['mix']:>7} {1e6 / r['floor']:>6.2f} {r['us_norm']:>6.2f} "
              f"{r['us_scan']:>6.2f} {1e6 / r['classify']:>8.2f}")


if __name__ == "__main__":
    main()
