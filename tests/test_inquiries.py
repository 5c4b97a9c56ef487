"""Recognising residents' questions for the police (a labelled table, precision first), and answering them
from the knowledge base (variants, typos, traditional characters, misses), with the settings that drive both."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from bot.config.inquiry_schema import InquirySettings
from bot.config.loader import load_config
from handlers import knowledge
from handlers.inquiries import detect
from handlers.knowledge import KnowledgeError, knowledge_for, load_knowledge, parse_knowledge
from handlers.routing import Router
from handlers.ticket_commands import TicketCommand, parse_ticket_command
from tests.conftest import ROOT

SETTINGS = InquirySettings()
BOT, OFFICER = "bot", "officer"

# (message, who it @-mentions). Realistic messages in a residents' group with its police officers.
POSITIVE: list[tuple[str, str | None]] = [
    ("请问派出所几点上班？", None),
    ("派出所周六开门吗", None),
    ("请问户籍窗口中午休息吗？", None),
    ("身份证丢了怎么办？", None),
    ("我身份证掉了，要怎么补办", None),
    ("身份證遺失了怎麼辦？", None),
    ("孩子出生了户口怎么上？", None),
    ("新生儿报户口需要带什么材料", None),
    ("请问无犯罪记录证明在哪里开？", None),
    ("单位让我开个无犯罪证明，网上能办吗", None),
    ("居住证到期了怎么续？", None),
    ("居住证积分怎么算的？", None),
    ("想问下居住证怎么办理", None),
    ("外地身份证能在上海换吗？", None),
    ("临时身份证多久能拿到？", None),
    ("港澳通行证过期了去哪里办？", None),
    ("护照在派出所能办吗", None),
    ("买了房子，户口怎么迁过来？", None),
    ("户口本丢了怎么补办", None),
    ("请问户籍档案怎么调？", None),
    ("上海落户需要什么条件？", None),
    ("派出所能开亲属关系证明吗？", None),
    ("我想开个户籍证明，要带什么？", None),
    ("我上个月报的案子有进展了吗？", None),
    ("报案回执丢了怎么查案件进展", None),
    ("捡到一张身份证，交到派出所可以吗？", None),
    ("请问民警，楼上半夜太吵了派出所管吗？", None),
    ("狗证是去派出所办吗？", None),
    ("外国朋友来我家住，要去派出所登记吗？", None),
    ("社区民警是哪位？怎么联系？", None),
    ("警官您好，孩子户口迁移要本人到场吗", None),
    ("请问改名字要去派出所吗", None),
    ("身份证快到期了，能提前换吗", None),
    ("派出所办事要预约么", None),
    ("王警官，我想咨询一下居住登记的事", None),
    ("派出所的电话是多少？", None),
    ("你们派出所几点下班", None),
    ("我的身份证办好了吗？", None),
    ("谁知道派出所几点下班？", None),
    ("@花木派出所公号\u2005我家门口的路灯坏了好几天了，能帮忙反映一下吗", BOT),
    ("@花木派出所公号\u2005小区里有人天天在楼道里堆杂物", BOT),
    ("@王警官\u2005我家楼下天天有人乱停车，堵住消防通道", OFFICER),
    ("@王警官\u2005上次说的电动车充电桩什么时候装？", OFFICER),
    ("@花木派出所公号\u2005请问怎么联系社区民警", BOT),
    ("@王警官\u2005您好，我婆婆的户口想迁到我们这里，需要什么手续", OFFICER),
    ("@花木派出所公号\u2005谢谢，那暂住证现在还要办吗？", BOT),
]

NEGATIVE: list[tuple[str, str | None]] = [
    ("明天几点停水？", None),
    ("谁家的快递？放在3楼楼道里", None),
    ("今晚吃火锅吗", None),
    ("孩子放学了", None),
    ("电梯又坏了吗？", None),
    ("晚上有人一起跳广场舞吗？", None),
    ("物业电话多少？", None),
    ("菜场几点开门啊", None),
    ("有谁知道附近哪里修鞋？", None),
    ("楼下的车是谁的？挡住我了", None),
    ("大家好，我是新搬来的12楼住户", None),
    ("谢谢王警官！", None),
    ("感谢民警同志，辛苦了", None),
    ("今天派出所民警来小区宣传反诈了，大家注意", None),
    ("派出所的民警真负责，点赞", None),
    ("派出所旁边新开的面馆好吃吗？", None),
    ("派出所对面那家超市还开着吗", None),
    ("刚才警察来过了吗？我在上班没看到", None),
    ("警车到了没有？", None),
    ("有人报警了吗？", None),
    ("你身份证带了吗？明天去银行要用", None),
    ("你家孩子户口办好了吗？", None),
    ("明天去派出所办居住证，有人一起吗？", None),
    ("这个警察演得好吗？电视剧里的", None),
    ("身份证复印件我放在物业了，明天去拿", None),
    ("户口本在我妈那里，周末去拿", None),
    ("我昨天去派出所办好居住证了，很快", None),
    ("孩子学校要我们交户口本复印件，已经交了", None),
    ("超市积分怎么兑换？", None),
    ("窗户关好了吗？要下雨了", None),
    ("明天去医院要带医保卡吗", None),
    ("社保卡丢了怎么办？", None),
    ("驾驶证到期去哪换？", None),
    ("公积金怎么提取啊？", None),
    ("楼上漏水了找谁？", None),
    ("小区门口的快递柜坏了找谁", None),
    ("下午三点业委会开会吗？", None),
    ("有没有人拼车去浦东机场？", None),
    ("宝宝几个月可以吃辅食呢", None),
    ("明天降温，大家多穿点", None),
    ("谁家的猫跑出来了？", None),
    ("哈哈哈哈", None),
    ("@王警官\u2005谢谢您！", OFFICER),
    ("@花木派出所公号\u2005辛苦了", BOT),
    ("@王警官\u2005好的，收到", OFFICER),
    ("@王警官\u2005谢谢王警官上次帮忙，孩子很开心", OFFICER),
    ("@花木派出所公号", BOT),
]


def _detect(text: str, mention: str | None) -> bool:
    return detect(text, SETTINGS, mentions_bot=mention == BOT, mentions_officer=mention == OFFICER).is_inquiry


def test_the_table_is_big_enough_and_consistent() -> None:
    assert len(POSITIVE) >= 40 and len(NEGATIVE) >= 40
    assert not {t for t, _ in POSITIVE} & {t for t, _ in NEGATIVE}


@pytest.mark.parametrize(("text", "mention"), POSITIVE, ids=[t for t, _ in POSITIVE])
def test_questions_for_the_police_are_inquiries(text: str, mention: str | None) -> None:
    assert _detect(text, mention)


@pytest.mark.parametrize(("text", "mention"), NEGATIVE, ids=[t for t, _ in NEGATIVE])
def test_neighbour_talk_is_not(text: str, mention: str | None) -> None:
    assert not _detect(text, mention)


def test_precision_and_recall_on_the_table() -> None:
    true_positives = sum(_detect(t, m) for t, m in POSITIVE)
    false_positives = sum(_detect(t, m) for t, m in NEGATIVE)
    assert true_positives / (true_positives + false_positives) == 1.0  # precision: no neighbour chat is a ticket
    assert true_positives / len(POSITIVE) == 1.0


def test_no_inquiry_in_the_table_is_taken_by_a_route() -> None:
    """The pipeline asks about inquiries only when no route matched: the table's questions must reach us."""
    router = Router(load_config(ROOT / "config.yaml"))
    routed = [t for t, _ in POSITIVE if router.classify(t, "jinxiu").matches]
    assert routed == []


def test_reasons() -> None:
    assert detect("@花木派出所公号\u2005停车场的杆坏了", SETTINGS, mentions_bot=True).reason == "mentions_bot"
    assert detect("@王警官\u2005停车场的杆坏了", SETTINGS, mentions_officer=True).reason == "mentions_officer"
    assert detect("派出所几点上班？", SETTINGS).reason == "question"
    assert detect("明天几点停水？", SETTINGS).reason == "no_topic"
    assert detect("身份证复印件放物业了", SETTINGS).reason == "no_question"
    assert detect("派出所旁边的面馆好吃吗？", SETTINGS).reason == "chatter"
    assert detect("@王警官\u2005辛苦了", SETTINGS, mentions_officer=True).reason == "courtesy"
    assert detect("@花木派出所公号 ", SETTINGS, mentions_bot=True).reason == "empty"


def test_officer_mentions_can_be_turned_off() -> None:
    settings = InquirySettings.model_validate({"detection": {"officer_mentions": False}})
    assert not detect("@王警官\u2005停车场的杆坏了", settings, mentions_officer=True).is_inquiry
    assert detect("@王警官\u2005停车场的杆坏了", SETTINGS, mentions_officer=True).is_inquiry


# -- the knowledge base -------------------------------------------------------------------------------------
KB = load_knowledge(str(ROOT / "knowledge.yaml"))

MATCHES = [
    # plain variants
    ("请问派出所几点上班？", "window_hours"),
    ("周六派出所开门吗", "window_hours"),
    ("身份证丢了怎么办？", "id_card_lost"),
    ("无犯罪记录证明在哪里开", "no_criminal_record"),
    ("港澳通行证过期了怎么续", "exit_entry"),
    ("居住证积分怎么算", "residence_points"),
    ("捡到一个钱包怎么处理", "lost_property"),
    ("狗证在哪办", "dog_registration"),
    ("请问户籍档案怎么调", "archive_lookup"),
    ("派出所能开亲属关系证明吗", "other_certificates"),
    ("上海落户条件是什么", "hukou_policy"),
    ("外国朋友来我家住要登记吗", "foreigner_registration"),
    ("报案以后怎么查进展", "case_progress"),
    # other wording
    ("我身份证掉了，要怎么补办", "id_card_lost"),
    ("孩子出生了户口怎么上", "hukou_newborn"),
    ("我儿子16岁了想办身份证要带什么", "id_card_first"),
    ("单位让我开个无犯罪证明，网上能办吗", "no_criminal_record"),
    ("买了房子户口怎么迁过来", "hukou_move"),
    ("我的案子报了一个月了没消息", "case_progress"),
    ("楼上半夜太吵了派出所管吗", "noise_nuisance"),
    ("@花木派出所公号\u2005王警官您好，请问临时身份证多久能拿", "id_card_temporary"),
    ("身份证快到期了", "id_card_renew"),
    # typos
    ("身份正丢了怎么补办", "id_card_lost"),
    ("户口本丢了怎么办理补办", "hukou_book"),
    ("居住正怎么办理", "residence_permit"),
    # traditional characters and full-width
    ("身份證遺失了怎麼辦？", "id_card_lost"),
    ("新生兒上戶口", "hukou_newborn"),
    ("護照怎麼辦理", "exit_entry"),
    ("派出所幾點上班？", "window_hours"),
    # misses: not police business, or nothing in the knowledge base
    ("小区门口的快递柜坏了找谁", None),
    ("请问明天几点停水", None),
    ("社保卡丢了怎么办", None),
    ("结婚证在哪办", None),
    ("电动车怎么上牌", None),
    ("驾驶证到期怎么换", None),
    ("公积金怎么提取", None),
    ("请问派出所能帮忙调监控吗", None),
]


def test_the_default_knowledge_base_is_complete() -> None:
    assert 15 <= len(KB.entries) <= 25
    categories = set(SETTINGS.categories)
    for entry in KB.entries:
        assert entry.category in categories, entry.id
        assert len(entry.answer) >= 60, entry.id
        assert "  " not in entry.answer and "\n" not in entry.answer  # folded lines joined cleanly
    topics = {e.id for e in KB.entries}
    for needed in ("window_hours", "id_card_first", "id_card_renew", "id_card_lost", "id_card_temporary",
                   "residence_permit", "residence_points", "no_criminal_record", "archive_lookup", "case_progress",
                   "exit_entry", "lost_property", "hukou_policy"):
        assert needed in topics


def test_every_entry_finds_itself() -> None:
    """Each question variant, asked as written, is answered by its own entry."""
    wrong = []
    for entry in KB.entries:
        for question in entry.questions:
            found = KB.match(question, SETTINGS.match_threshold)
            if found is None or found.entry.id != entry.id:
                wrong.append((question, entry.id, found.entry.id if found else None))
    assert wrong == []


@pytest.mark.parametrize(("text", "expected"), MATCHES, ids=[t for t, _ in MATCHES])
def test_matching(text: str, expected: str | None) -> None:
    found = KB.match(text, SETTINGS.match_threshold)
    assert (found.entry.id if found else None) == expected
    if found:
        assert found.score >= SETTINGS.match_threshold


def test_threshold_decides() -> None:
    best = KB.rank("社保卡丢了怎么办")[0]
    assert 0 < best.score < SETTINGS.match_threshold
    assert KB.match("社保卡丢了怎么办", best.score) is not None
    assert KB.match("身份证丢了怎么办", 1.01) is None


def test_answers_may_use_the_station_name() -> None:
    entry = KB.get("window_hours")
    assert entry is not None and "{{ station.name }}" in entry.answer
    rendered = knowledge.render_answer(entry.answer, {"station": {"name": "花木派出所"}})
    assert rendered.startswith("花木派出所户籍窗口")


def test_broken_files_name_the_line(tmp_path: Path) -> None:
    with pytest.raises(KnowledgeError) as error:
        parse_knowledge("entries:\n  - id: a\n    title: t\n    category: general\n    questions: [x]\n", "kb.yaml")
    assert "kb.yaml:2" in str(error.value) and "answer" in str(error.value)
    duplicate = ("entries:\n"
                 "  - {id: a, title: t, category: general, questions: [问题], answer: 答}\n"
                 "  - {id: a, title: t, category: general, questions: [问题], answer: 答}\n")
    with pytest.raises(KnowledgeError, match=r"kb.yaml:3: entries\[1\].id: duplicate id 'a'"):
        parse_knowledge(duplicate, "kb.yaml")
    with pytest.raises(KnowledgeError, match="invalid YAML"):
        parse_knowledge("entries: [\n", "kb.yaml")
    with pytest.raises(KnowledgeError, match="cannot read"):
        load_knowledge(str(tmp_path / "missing.yaml"))


def test_edits_are_picked_up_and_a_broken_file_answers_nothing(tmp_path: Path) -> None:
    path = tmp_path / "kb.yaml"
    path.write_text("entries:\n  - {id: a, title: 停车, category: general, questions: [小区停车怎么收费], "
                    "answer: 找物业}\n", encoding="utf-8")
    first = knowledge_for(str(path))
    assert [e.id for e in first.entries] == ["a"]
    assert knowledge_for(str(path)) is first  # cached while unchanged
    path.write_text("entries:\n  - {id: b, title: 停车, category: general, questions: [小区停车怎么收费], "
                    "answer: 找物业管理处}\n", encoding="utf-8")
    assert [e.id for e in knowledge_for(str(path)).entries] == ["b"]
    path.write_text("entries: [\n", encoding="utf-8")
    assert knowledge_for(str(path)).entries == ()


def test_a_config_version_reads_its_knowledge_base_when_built_not_on_the_first_question(tmp_path: Path) -> None:
    from handlers.runtime import ConfigVersion

    path = tmp_path / "kb.yaml"
    path.write_text("entries:\n  - {id: a, title: 停车, category: general, questions: [小区停车怎么收费], "
                    "answer: 找物业}\n", encoding="utf-8")
    config = load_config(ROOT / "config.yaml")
    config = config.model_copy(update={"inquiries": config.inquiries.model_copy(
        update={"knowledge_base": str(path)})})
    assert knowledge.resolve_path(str(path)) not in knowledge._cache
    ConfigVersion.build(config)
    _, loaded = knowledge._cache[knowledge.resolve_path(str(path))]
    assert [e.id for e in loaded.entries] == ["a"]
    assert knowledge_for(str(path)) is loaded


# -- settings --------------------------------------------------------------------------------------------
def test_settings_validation() -> None:
    assert SETTINGS.sla_hours == 24 and [r.total_seconds() / 3600 for r in SETTINGS.reminders] == [4, 20]
    custom = InquirySettings.model_validate({"sla": "8h", "reminders": ["1h", "6h"]})
    assert custom.sla_hours == 8
    with pytest.raises(ValidationError, match="not before the SLA"):
        InquirySettings.model_validate({"sla": "8h"})  # the default 20 h reminder is past it
    with pytest.raises(ValidationError, match="increasing order"):
        InquirySettings.model_validate({"reminders": ["6h", "2h"]})
    with pytest.raises(ValidationError, match="default_category"):
        InquirySettings.model_validate({"default_category": "nope"})
    with pytest.raises(ValidationError, match="template does not compile"):
        InquirySettings.model_validate({"texts": {"acknowledged": "{{ ticket.id "}})
    with pytest.raises(ValidationError, match="invalid regular expression"):
        InquirySettings.model_validate({"detection": {"chatter_patterns": ["(unclosed"]}})
    with pytest.raises(ValidationError):
        InquirySettings.model_validate({"unknown_setting": 1})


# -- officers' commands for tickets --------------------------------------------------------------------------
PARSE = [
    ("答 35 请带身份证到户籍窗口办理", TicketCommand("answer", 35, "请带身份证到户籍窗口办理")),
    ("答35：周一上午来", TicketCommand("answer", 35, "周一上午来")),
    ("答复 #7 可以网上办", TicketCommand("answer", 7, "可以网上办")),
    ("回复 7 可以", TicketCommand("answer", 7, "可以")),
    ("答 ３５ 全角数字", TicketCommand("answer", 35, "全角数字")),
    ("答 12\n第一行\n第二行", TicketCommand("answer", 12, "第一行\n第二行")),
    ("反馈 35 已联系户籍科，下周一可以办", TicketCommand("feedback", 35, "已联系户籍科，下周一可以办")),
    ("进展 9 在核查", TicketCommand("feedback", 9, "在核查")),
    ("答 35", TicketCommand("answer", 35, "")),
    ("收到 35", None),
    ("结 35 已办结", None),
    ("答应你了", None),
    ("回复一下", None),
    ("", None),
]


@pytest.mark.parametrize(("text", "expected"), PARSE, ids=[t or "empty" for t, _ in PARSE])
def test_parse_ticket_command(text: str, expected: TicketCommand | None) -> None:
    assert parse_ticket_command(text) == expected
