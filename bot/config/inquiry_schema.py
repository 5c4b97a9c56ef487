"""The ``inquiries:`` section of ``config.yaml``: residents' questions, the knowledge base that answers the
common ones at once, and the 24-hour promise (件件有回应、事事有结果) with its reminders.

Validation only, like ``schema.py``. This module does not import ``bot.config.schema`` at import time
(``schema.py`` imports this one for ``Config.inquiries``); the duration parser is looked up when used.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

from bot.config.checks import compiling
from bot.config.templates import template_error

Identifier = Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]+$", min_length=1, max_length=64)]
# Who a category's tickets go to: one of these, or an officer id.
ASSIGN_TARGETS = (
    "own", "covering", "duty", "supervisor", "antifraud", "general", "public_order", "community",
)


def _duration(value: Any) -> timedelta:
    from bot.config.schema import parse_duration  # here, not at import: schema.py imports this module

    return parse_duration(value)


Duration = Annotated[timedelta, BeforeValidator(_duration)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class InquiryCategory(_Strict):
    label: str = Field(min_length=1, description="Chinese name shown to officers, e.g. 户籍证件")
    assign: str = Field("own", description=f"one of {', '.join(ASSIGN_TARGETS)}, or an officer id")
    keywords: list[str] = Field(default_factory=list, description="any of these in a question puts it here")

    @field_validator("keywords")
    @classmethod
    def _non_empty(cls, words: list[str]) -> list[str]:
        if any(not str(word).strip() for word in words):
            raise ValueError("keywords must not be empty")
        return words


def _default_categories() -> dict[str, InquiryCategory]:
    return {
        "household": InquiryCategory(
            label="户籍证件", assign="general",
            keywords=["户口", "户籍", "落户", "迁户", "身份证", "居住证", "积分", "暂住", "居住登记", "证明",
                      "无犯罪", "档案", "户口本", "户口簿", "改名", "出生", "新生儿"]),
        "exit_entry": InquiryCategory(
            label="出入境", assign="general",
            keywords=["出入境", "护照", "通行证", "签注", "出国", "港澳", "台湾"]),
        "public_order": InquiryCategory(
            label="治安管理", assign="public_order",
            keywords=["治安", "扰民", "噪音", "噪声", "养狗", "养犬", "狗证", "犬证", "群租", "住宿登记",
                      "外国人", "外籍", "赌博", "旅馆"]),
        "case": InquiryCategory(
            label="案件查询", assign="own",
            keywords=["报案", "案件", "案子", "立案", "受案", "回执", "进展", "被骗", "追回"]),
        "lost_property": InquiryCategory(
            label="失物招领", assign="own", keywords=["失物", "捡到", "招领", "丢了", "遗失", "落在"]),
        "general": InquiryCategory(label="其他咨询", assign="own"),
    }


class DetectionSettings(_Strict):
    """What makes a group message a question for the police. Words are compared after normalisation
    (simplified, lower case, no spaces or punctuation); the question mark is looked for in the raw text.

    A message is an inquiry when it @-mentions the public account or an officer, or when it has a police
    topic word and a question signal (a question mark, a question word, or a request such as 想办/要开),
    unless a chatter pattern says it is neighbours talking about the police rather than asking them."""

    topics: list[str] = Field(default_factory=lambda: [
        "派出所", "民警", "警官", "警察", "公安", "片警", "所长", "户口", "户籍", "落户", "迁户", "身份证",
        "居住证", "暂住证", "居住登记", "出入境", "护照", "港澳通行证", "往来港澳", "台湾通行证", "签注",
        "无犯罪", "犯罪记录", "户籍证明", "亲属关系证明", "档案", "案件", "案子", "报案", "立案", "受案",
        "回执", "失物招领", "办事大厅", "办事窗口", "办事时间", "户籍窗口", "受理窗口", "积分落户",
        "落户积分", "居住证积分", "治安", "养犬登记", "犬证", "狗证", "住宿登记", "公号",
    ])
    topic_patterns: list[str] = Field(default_factory=lambda: [
        r"开.{0,4}证明", r"证明.{0,3}(怎么|哪里|去哪|在哪)",
        r"窗口.{0,4}(几点|上班|下班|开门|关门|周末|时间)",
    ], description="regular expressions on the normalised text that also count as a police topic")
    question_words: list[str] = Field(default_factory=lambda: [
        "吗", "请问", "怎么", "怎样", "咋", "如何", "哪里", "哪儿", "哪个", "哪些", "在哪", "去哪", "什么",
        "啥", "几点", "几号", "几天", "多久", "多长", "多少", "能不能", "可不可以", "能否", "可否", "是否",
        "要不要", "需不需要", "用不用", "有没有", "行不行", "会不会", "是不是", "为什么", "为啥", "咨询",
        "想问", "问一下", "问下", "打听", "请教", "麻烦问", "麻烦您", "求助",
    ])
    request_patterns: list[str] = Field(default_factory=lambda: [
        r"(想|要|需要|得)(办|开|补|换|查|调|迁|落|申请|预约|了解|咨询|报案)",
    ], description="regular expressions on the normalised text that count as a question signal")
    chatter_patterns: list[str] = Field(default_factory=lambda: [
        # the police station as a landmark: 派出所旁边新开的面馆好吃吗
        r"派出所(旁边|对面|隔壁|边上|附近|后面|那边的|门口那)",
        # whether the police came: neighbours telling each other, not asking the police
        r"(警察|民警|警官|警车|派出所的人)(都|已经|刚|刚才|好像|有没有)?.{0,3}(来|到|走)(过|了)",
        # someone else's papers: 你身份证带了吗
        r"你的?(身份证|户口本|户口簿|居住证|护照)",
        r"(身份证|户口本|护照)(借|给)我",
        r"你(?!们)(家|的)?.{0,8}(办好|办完|弄好|搞定|拿到|找到)",
        # arranging among neighbours: 明天去派出所办居住证，有人一起吗
        r"(有人|谁|有没有人)(一起|陪我|顺路|拼车)",
        # television and films
        r"电视剧|电影|综艺|演得|剧里",
    ], description="regular expressions on the normalised text that veto a topic+question match")
    courtesy_patterns: list[str] = Field(default_factory=lambda: [
        r"^(谢谢|感谢|多谢|辛苦|辛苦了|辛苦啦|好的|好|收到|明白|了解|知道了|ok|赞|点赞|威武|给力|您好|你好|早上好"
        r"|晚上好|在吗)+(您|你|了|啦|哈|呀|警官|民警|王警官|各位)*$",
    ], description="an @-mention with only this (thanks, greetings) is not an inquiry")
    officer_mentions: bool = Field(
        True, description="an @-mention of an officer makes a resident's message an inquiry")

    @field_validator("topic_patterns", "request_patterns", "chatter_patterns", "courtesy_patterns")
    @classmethod
    def _compiles(cls, patterns: list[str]) -> list[str]:
        return compiling(patterns)


class InquiryTexts(_Strict):
    """What residents and officers read about inquiries; Jinja2 templates. Available: station, group,
    resident, ticket (id, category_label, text, time, deadline), officer (the assignee), sla_hours, and
    where it applies: entry (title, answer), hours, text (an officer's answer), result, by."""

    kb_answer: str = (
        "【{{ station.name }}】您好，关于“{{ entry.title }}”：\n{{ entry.answer }}\n"
        "（咨询编号 #{{ ticket.id }}）如果还没解决您的问题，民警会在{{ sla_hours }}小时内跟进答复。"
    )
    acknowledged: str = (
        "【{{ station.name }}】已收到您的问题（咨询编号 #{{ ticket.id }}），民警会在{{ sla_hours }}小时内答复，"
        "请留意群消息。紧急情况请直接拨打110。"
    )
    off_shift_note: str = "现在是非工作时间，民警上班后会尽快答复。"
    asked_again: str = (
        "【{{ station.name }}】您的问题已登记（咨询编号 #{{ ticket.id }}），{{ officer.name }}会在"
        "{{ ticket.deadline }}前答复，请稍候。紧急情况请直接拨打110。"
    )
    ping: str = (
        "【居民咨询 #{{ ticket.id }}】{{ ticket.category_label }}\n"
        "群：{{ group.name }}\n居民：{{ resident.name }}\n时间：{{ ticket.time }}\n内容：{{ ticket.text }}\n"
        "{% if entry %}公号已自动回复“{{ entry.title }}”。\n{% endif %}"
        "请在{{ ticket.deadline }}前答复：在群里@居民回复，或私聊回复“答 {{ ticket.id }} 答复内容”；"
        "办结后回复“结 {{ ticket.id }} 结果”。"
    )
    reminder: str = (
        "【提醒】居民咨询 #{{ ticket.id }}（{{ group.name }}，{{ resident.name }}）已{{ hours }}小时未答复，"
        "请在{{ ticket.deadline }}前答复。内容：{{ ticket.text }}\n"
        "回复“答 {{ ticket.id }} 答复内容”即可由公号转告居民。"
    )
    breach_assignee: str = (
        "【超时】居民咨询 #{{ ticket.id }}（{{ group.name }}，{{ resident.name }}）已超过{{ sla_hours }}小时未答复，"
        "已报告所领导。请尽快回复“答 {{ ticket.id }} 答复内容”。"
    )
    breach_supervisor: str = (
        "【咨询超时 #{{ ticket.id }}】{{ group.name }}居民{{ resident.name }}的咨询已超过{{ sla_hours }}小时"
        "未答复（负责民警：{{ officer.name }}）。\n时间：{{ ticket.time }}\n内容：{{ ticket.text }}"
    )
    answer_group: str = "【{{ station.name }}】{{ by }}答复（咨询 #{{ ticket.id }}）：{{ text }}"
    feedback_group: str = (
        "【{{ station.name }}】关于您的问题（咨询 #{{ ticket.id }}），{{ by }}反馈：{{ text }}"
    )
    closed_group: str = (
        "【{{ station.name }}】您的问题（咨询 #{{ ticket.id }}）已办结：{{ result }}（{{ by }}）"
    )
    answer_officer: str = (
        "已把您的答复发到{{ group.name }}（咨询 #{{ ticket.id }}）。办结后请回复“结 {{ ticket.id }} 结果”。"
    )
    feedback_officer: str = "已把反馈发到{{ group.name }}（咨询 #{{ ticket.id }}）。"
    closed_officer: str = "已办结咨询 #{{ ticket.id }}，结果已告知群里居民：{{ result }}"
    already_closed: str = "咨询 #{{ ticket.id }} 已经办结，无需再处理。"
    ack_is_inquiry: str = (
        "#{{ ticket.id }} 是居民咨询，不需要“收到”。请回复“答 {{ ticket.id }} 答复内容”答复居民，"
        "或“结 {{ ticket.id }} 结果”办结。"
    )
    transfer_ping: str = (
        "【咨询转交 #{{ ticket.id }}】{{ by }}把这条居民咨询转给您：{{ ticket.category_label }}\n"
        "群：{{ group.name }}\n居民：{{ resident.name }}\n时间：{{ ticket.time }}\n内容：{{ ticket.text }}\n"
        "请在{{ ticket.deadline }}前答复：回复“答 {{ ticket.id }} 答复内容”。"
    )
    transfer_officer: str = "咨询 #{{ ticket.id }} 已转给{{ officer.name }}。"
    not_found: str = "没有找到咨询 #{{ number }}，或它不属于本所。"
    empty_text: str = "请在编号后面写上内容，例如“答 {{ ticket.id }} 请带身份证到户籍窗口办理”。"
    default_result: str = "民警已答复处理"

    @model_validator(mode="after")
    def _templates_compile(self) -> InquiryTexts:
        for name, source in self.model_dump().items():
            if error := template_error(source):
                raise ValueError(f"texts.{name}: {error}")
        return self


class InquirySettings(_Strict):
    enabled: bool = True
    knowledge_base: str = Field(
        "knowledge.yaml",
        description="the FAQ file; a relative path is looked up in the working directory, then next to "
        "main.py",
    )
    match_threshold: float = Field(0.5, ge=0.0, le=1.0,
                                   description="a knowledge-base match scoring below this is no answer")
    detection: DetectionSettings = Field(default_factory=DetectionSettings)
    categories: dict[Identifier, InquiryCategory] = Field(default_factory=_default_categories)
    default_category: Identifier = "general"
    sla: Duration = Field(timedelta(hours=24),
                          description="the promise: an officer's first response within this")
    reminders: list[Duration] = Field(
        default_factory=lambda: [timedelta(hours=4), timedelta(hours=20)],
        description="remind the assignee this long after the question while nobody has responded")
    escalate_to: list[str] = Field(
        default_factory=lambda: ["supervisor"],
        description="who hears of a breach: roles as in escalation steps (supervisor, duty, …) or "
        "officer ids")
    kb_answer_counts_as_response: bool = Field(
        False, description="true: the bot's knowledge-base answer stops the clock; false: an officer still "
        "has to respond (or close) within the SLA")
    repeat_window: Duration = Field(
        timedelta(minutes=30),
        description="the same resident asking the same thing again within this, before anyone has "
        "responded, joins the open ticket")
    texts: InquiryTexts = Field(default_factory=InquiryTexts)

    @model_validator(mode="after")
    def _consistent(self) -> InquirySettings:
        if self.default_category not in self.categories:
            raise ValueError(f"default_category {self.default_category!r} is not one of the categories: "
                             f"{', '.join(self.categories)}")
        previous = timedelta(0)
        for reminder in self.reminders:
            if reminder <= previous:
                raise ValueError("reminders must be positive and in increasing order")
            if reminder >= self.sla:
                raise ValueError(f"a reminder at {reminder} is not before the SLA ({self.sla})")
            previous = reminder
        if self.sla <= timedelta(0):
            raise ValueError("sla must be positive")
        return self

    @property
    def sla_hours(self) -> int | float:
        hours = self.sla.total_seconds() / 3600
        return int(hours) if hours == int(hours) else round(hours, 1)


def inquiry_reference_errors(config: Any) -> list[tuple[tuple[str | int, ...], str]]:
    """Officer ids the inquiry settings name must exist (for the loader's cross-reference pass)."""
    settings: InquirySettings = config.inquiries
    known = {officer.id for officer in config.officers}
    errors: list[tuple[tuple[str | int, ...], str]] = []
    for category_id, category in settings.categories.items():
        if category.assign not in ASSIGN_TARGETS and category.assign not in known:
            errors.append((("inquiries", "categories", category_id, "assign"),
                           f"unknown role or officer {category.assign!r}; expected one of "
                           f"{', '.join(ASSIGN_TARGETS)} or an officer id ({', '.join(sorted(known))})"))
    for index, target in enumerate(settings.escalate_to):
        if target not in ASSIGN_TARGETS and target not in known:
            errors.append((("inquiries", "escalate_to", index),
                           f"unknown role or officer {target!r}; expected one of {', '.join(ASSIGN_TARGETS)} "
                           f"or an officer id"))
    return errors
