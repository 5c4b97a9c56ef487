"""What the district's residents say: the mix of reports and everyday chat, and who says it.

* Reports (default 2%): a positive of ``tests/data/labelled_messages.yaml`` (any category but ``none``),
  varied so the bot never sees the same string twice by construction (digits redrawn, a lead-in or a tail,
  sometimes a chat clause joined on), said by a resident picked uniformly in the group.
* Everyday chat: a varied negative of the labelled set (default 8%: notices, hard negatives like 火锅,
  孩子放学了, 反诈提醒) or generated chit-chat from a phrase bank (the rest), said by a resident picked with
  Zipf weights (a few people say most of what a group says, as in real groups).

Nobody repeats a text in the same group within the bot's duplicate window: that would be (rightly) dropped
as a duplicate and the benchmark could no longer count what was handled.
"""

from __future__ import annotations

import bisect
import itertools
import random
from dataclasses import dataclass
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
LABELLED = ROOT / "tests" / "data" / "labelled_messages.yaml"

NAMES = [
    "王姐",
    "小李",
    "陈阿姨",
    "老周",
    "张师傅",
    "刘老师",
    "小美",
    "赵叔",
    "阿强",
    "孙阿婆",
    "吴先生",
    "小徐",
    "黄姐",
    "马大爷",
    "林林",
    "朱阿姨",
    "胡老师",
    "郭哥",
    "何姐",
    "高老板",
    "罗阿姨",
    "宋姐",
    "唐叔",
]
PLACES = [
    "菜场",
    "超市",
    "地铁站",
    "公园",
    "社区医院",
    "银行",
    "菜鸟驿站",
    "物业办公室",
    "小区门口",
    "健身房",
    "图书馆",
    "社区食堂",
    "理发店",
    "药店",
    "幼儿园门口",
    "篮球场",
    "南门",
    "北门",
    "便利店",
    "奶茶店",
    "面馆",
    "社区活动室",
    "老年活动中心",
    "停车场",
]
THINGS = [
    "鸡蛋",
    "大米",
    "牛奶",
    "青菜",
    "苹果",
    "车厘子",
    "西瓜",
    "草莓",
    "面包",
    "猪肉",
    "大闸蟹",
    "粽子",
    "月饼",
    "汤圆",
    "土豆",
    "番茄",
    "水饺",
    "酸奶",
    "橙子",
    "葡萄",
    "馄饨",
    "小笼包",
    "豆浆",
    "抽纸",
    "洗衣液",
    "生煎",
]
TIMES = [
    "明天上午",
    "今晚七点",
    "周六下午",
    "后天",
    "下周一",
    "今天中午",
    "明早八点",
    "周日上午",
    "晚上九点",
    "这周末",
    "下午三点",
    "明天傍晚",
    "月底",
    "下周三晚上",
    "今天下午",
]
TAILS = [
    "",
    "",
    "",
    "啊",
    "呀",
    "哦",
    "吧",
    "呢",
    "哈",
    "~",
    "!!",
    "？",
    "。",
    "！",
    "哈哈",
    "嘛",
    "啦",
    "👍",
    "😂",
    "🙏",
    "[捂脸]",
    "[呲牙]",
    "[强]",
    "🌹",
    "[抱拳]",
    "❤️",
    "[偷笑]",
    "[OK]",
]
CLAUSES = [
    "{time}{place}人多吗",
    "有没有人{time}一起去{place}",
    "团购的{thing}到了 在{n}号楼门口自取",
    "{name} 你家{thing}还要吗",
    "请问{place}几点关门",
    "今天{thing}{price}一斤 好便宜",
    "{n}号楼电梯又坏了 物业什么时候修",
    "谁家的快递放错了 {room}的 在我家门口",
    "明天停电吗 看到通知说{n}号楼要检修",
    "收到 谢谢{name}",
    "好的",
    "哈哈哈哈",
    "早上好 今天降温了 大家多穿点",
    "{room}的邻居 你家车挡住我车了 麻烦挪一下",
    "有没有人知道附近哪里修手机",
    "晚上{place}有活动 可以去看看",
    "小区里的桂花开了 好香",
    "物业费交了吗 {time}截止",
    "垃圾分类 {thing}的包装放哪个桶",
    "楼下的猫又生了一窝小猫 有人要领养吗",
    "谁有打气筒 借我用一下",
    "{place}排队好长",
    "明天下雨 记得收衣服",
    "大家{time}有空吗 业委会开会",
    "这个{thing}在哪里买的 看着不错",
    "我家{thing}买多了 {price}转给需要的邻居",
    "有没有修水管的师傅电话",
    "{name}生日快乐🎂",
    "恭喜恭喜",
    "辛苦了",
    "谢谢大家",
    "@{name} 收到了吗",
    "群里有人卖二手婴儿车吗",
    "{time}社区有免费体检 带上身份证",
    "地铁{n}号线今天好挤",
    "周末去哪里玩 有推荐吗",
    "家里网络断了 是不是都断了",
    "{place}新开了一家店 {thing}蛮好吃的",
    "{thing}团购还有吗 我要两份",
    "{room}拼单{thing} 还差{n}份",
    "请问{place}现在开门了吗",
    "明天几点收垃圾",
    "小区的快递柜满了",
    "今年的{thing}比去年贵",
    "{name}做的{thing}太好吃了",
    "谁家装修这么早就开始了",
    "{time}有人一起打羽毛球吗",
    "楼道的灯不亮了",
    "水费怎么交 线上可以吗",
    "孩子放学了 我去接一下",
    "周末带娃去{place}",
    "今天{place}有打折 {thing}{price}",
    "物业说{time}修电梯",
    "业主大会的投票别忘了",
    "{n}号楼的车位还有出租的吗",
    "阿拉今朝去{place}白相",
    "侬晓得{place}几点开门伐",
    "今天最高{n}度",
    "谢谢{name}帮我收快递",
    "辛苦保安师傅了",
    "{name}家的狗狗好可爱",
    "晚饭吃{thing}",
    "求推荐靠谱的家政阿姨",
    "{time}{place}有义诊",
    "好的 知道了",
    "收到收到",
    "大家早点休息",
    "晚安",
    "早",
    "二手书谁要 免费送",
    "请问{room}是哪位邻居",
    "我在{place} 马上回来",
]
LEADS = [
    "",
    "",
    "",
    "@花木派出所公号 ",
    "各位邻居 ",
    "急！",
    "大家注意 ",
    "刚才 ",
    "请问 ",
    "有人知道吗 ",
    "紧急 ",
]
REPORT_TAILS = [
    "",
    "",
    "",
    " 大家注意",
    "！！",
    "[流泪]",
    " 😭",
    "。谢谢",
    " 怎么办",
    " 大家小心",
    "？",
    " 在线等",
]


def _fill(rng: random.Random, template: str) -> str:
    return template.format(
        name=rng.choice(NAMES),
        place=rng.choice(PLACES),
        thing=rng.choice(THINGS),
        time=rng.choice(TIMES),
        n=rng.randint(1, 32),
        room=f"{rng.randint(1, 32)}号{rng.randint(1, 28)}0{rng.randint(1, 4)}",
        price=rng.choice(
            [
                f"{rng.randint(2, 98)}块",
                f"{rng.randint(2, 98)}元",
                f"{rng.randint(1, 30)}.{rng.randint(1, 9)}",
            ]
        ),
    )


def chat_clause(rng: random.Random) -> str:
    return _fill(rng, rng.choice(CLAUSES)) + rng.choice(TAILS)


def chit_chat(rng: random.Random) -> str:
    roll = rng.random()
    count = 1 if roll < 0.55 else 2 if roll < 0.85 else rng.randint(3, 5)
    return rng.choice([" ", "，", "。", ""]).join(chat_clause(rng) for _ in range(count))[:200]


def vary(rng: random.Random, text: str) -> str:
    text = "".join(str(rng.randint(0, 9)) if c.isdigit() and c.isascii() else c for c in text)
    text = rng.choice(LEADS) + text + rng.choice(REPORT_TAILS)
    roll = rng.random()
    if roll < 0.15:
        text = chat_clause(rng) + " " + text
    elif roll < 0.3:
        text = text + "，" + chat_clause(rng)
    return text[:300]


def labelled() -> tuple[list[str], list[str]]:
    items = yaml.safe_load(LABELLED.read_text(encoding="utf-8"))
    reports = [str(i["text"]) for i in items if i["category"] != "none"]
    quiet = [str(i["text"]) for i in items if i["category"] == "none"]
    return reports, quiet


@dataclass
class Said:
    room: str
    sender: str
    text: str
    kind: str  # "report", "negative", "chat"


class Residents:
    """Draws (room, sender, text) for the next message of the district."""

    def __init__(
        self,
        rooms: dict[str, list[str]],
        seed: int,
        report_share: float,
        negative_share: float,
        zipf: float = 1.0,
        duplicate_window: float = 150.0,
    ) -> None:
        self.rng = random.Random(seed)
        self.rooms = list(rooms)
        self.members: dict[str, list[str]] = {}
        self.report_share = report_share
        self.negative_share = negative_share
        self.reports, self.quiet = labelled()
        self.duplicate_window = duplicate_window
        self._weights: dict[str, list[float]] = {}
        for room, members in rooms.items():
            order = members[:]
            self.rng.shuffle(order)
            self.members[room] = order
            self._weights[room] = list(
                itertools.accumulate(1.0 / (rank + 1) ** zipf for rank in range(len(order)))
            )
        self._recent: dict[tuple[str, str, str], float] = {}  # (room, sender, text) -> when said
        self._purged = 0.0

    def _chatty(self, room: str) -> str:
        cumulative = self._weights[room]
        index = bisect.bisect_left(cumulative, self.rng.random() * cumulative[-1])
        return self.members[room][min(index, len(cumulative) - 1)]

    def next(self, now: float, busy: set[tuple[str, str]]) -> Said:
        """``busy``: (room, sender) pairs that must not speak now (a report of theirs awaits its reply)."""
        rng = self.rng
        room = rng.choice(self.rooms)
        roll = rng.random()
        kind = (
            "report"
            if roll < self.report_share
            else "negative"
            if roll < self.report_share + self.negative_share
            else "chat"
        )
        for _ in range(50):
            sender = rng.choice(self.members[room]) if kind == "report" else self._chatty(room)
            if (room, sender) in busy:
                continue
            if kind == "report":
                text = vary(rng, rng.choice(self.reports))
            elif kind == "negative":
                text = vary(rng, rng.choice(self.quiet))
            else:
                text = chit_chat(rng)
            key = (room, sender, text)
            said = self._recent.get(key)
            if said is not None and now - said < self.duplicate_window:
                continue
            self._recent[key] = now
            self._purge(now)
            return Said(room, sender, text, kind)
        raise RuntimeError(f"no fresh (sender, text) found in {room}: the group is too small for this load")

    def census(self) -> list[tuple[str, str]]:
        """Every (room, resident) pair once, shuffled: to make everyone speak once."""
        pairs = [(room, member) for room, members in self.members.items() for member in members]
        self.rng.shuffle(pairs)
        return pairs

    def chat_from(self, room: str, sender: str, now: float) -> Said:
        """Chit-chat said by this resident (fresh: not one of their texts still in the duplicate window)."""
        for _ in range(50):
            text = chit_chat(self.rng)
            if now - self._recent.get((room, sender, text), -1e9) >= self.duplicate_window:
                self._recent[(room, sender, text)] = now
                return Said(room, sender, text, "chat")
        raise RuntimeError(f"no fresh text for {sender} in {room}")

    def _purge(self, now: float) -> None:
        if now - self._purged < 30:
            return
        self._purged = now
        self._recent = {k: t for k, t in self._recent.items() if now - t < self.duplicate_window}
