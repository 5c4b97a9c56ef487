// gonghao sandbox web chat: vanilla JS, no dependencies.
"use strict";

const API = "/sandbox/api";
const TZ = "Asia/Shanghai";
const timeFmt = new Intl.DateTimeFormat("zh-CN", {
  timeZone: TZ, hour: "2-digit", minute: "2-digit", second: "2-digit", hour12: false,
});
const dayFmt = new Intl.DateTimeFormat("zh-CN", {
  timeZone: TZ, year: "numeric", month: "long", day: "numeric", weekday: "short",
});

function $(id) { return document.getElementById(id); }

function el(tag, props, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props || {})) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

async function getJSON(url) {
  const res = await fetch(url, { cache: "no-store" });
  const data = await res.json();
  if (!res.ok) throw new Error(data.error_zh || data.error || res.statusText);
  return data;
}

async function postJSON(url, body) {
  const res = await fetch(url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  let data = {};
  try { data = await res.json(); } catch (_) { /* not JSON */ }
  if (!res.ok) throw new Error(data.error_zh || data.error || `请求失败（${res.status}）`);
  return data;
}

function sleep(ms) { return new Promise((resolve) => setTimeout(resolve, ms)); }

function setStatus(connected) {
  const node = $("status");
  if (!node) return;
  node.classList.remove("online", "offline");
  if (connected === true) { node.textContent = "公号在线"; node.classList.add("online"); }
  else if (connected === false) { node.textContent = "公号未连接"; node.classList.add("offline"); }
  else { node.textContent = "沙盒已断开"; node.classList.add("offline"); }
}

function indexWorld(world) {
  const people = new Map();
  people.set(world.bot.id, world.bot);
  for (const c of world.contacts) people.set(c.id, c);
  return people;
}

function roleBadge(person) {
  if (!person) return null;
  if (person.role === "bot") return el("span", { class: "badge bot", text: "公号" });
  if (person.role === "officer") return el("span", { class: "badge officer", text: "民警" });
  return null;
}

// ---------------------------------------------------------------- index page
async function renderIndex() {
  const world = await getJSON(`${API}/world`);
  const people = indexWorld(world);
  const name = (id) => (people.get(id) || { name: id }).name;
  setStatus(world.connected);
  $("station").textContent = `${world.bot.name} · 沙盒`;
  document.title = `${world.bot.name} · 沙盒`;

  const rooms = $("rooms");
  rooms.replaceChildren();
  for (const room of world.rooms) {
    const others = room.members.filter((id) => id !== world.bot.id);
    rooms.append(el("div", { class: "card" },
      el("h3", { text: room.topic }),
      el("div", { class: "meta", text: `${room.id} · 群主 ${name(room.owner)} · ${room.members.length} 人` }),
      el("div", { class: "names", text: others.map(name).join("、") }),
      el("a", { class: "go", href: `/room/${encodeURIComponent(room.id)}`, text: "进入群聊" }),
    ));
  }

  const roomsOf = (id) => world.rooms.filter((r) => r.members.includes(id)).map((r) => r.topic);
  for (const [target, role] of [["officers", "officer"], ["residents", "resident"]]) {
    const box = $(target);
    box.replaceChildren();
    for (const person of world.contacts.filter((c) => c.role === role)) {
      const joined = roomsOf(person.id);
      box.append(el("div", { class: "person" },
        el("div", { class: "name", text: person.name }, roleBadge(person)),
        el("div", { class: "meta", text: [person.title, joined.length ? `在群：${joined.join("、")}` : "未入群"]
          .filter(Boolean).join(" · ") }),
        el("a", { href: `/chat/${encodeURIComponent(person.id)}`, text: `以${person.name}身份私聊公号` }),
      ));
    }
  }
}

// --------------------------------------------------------- conversation page
const state = { world: null, people: null, kind: null, id: null, after: 0, lastDay: null };

function parseLocation() {
  const parts = location.pathname.split("/").filter(Boolean);
  return { kind: parts[0], id: decodeURIComponent(parts.slice(1).join("/")) };
}

function currentRoom() {
  return state.world.rooms.find((r) => r.id === state.id);
}

function nameOf(id) { return (state.people.get(id) || { name: id }).name; }

function renderMessage(m) {
  $("empty").hidden = true;
  const log = $("log");
  const date = new Date(m.timestamp);
  const day = dayFmt.format(date);
  if (day !== state.lastDay) {
    state.lastDay = day;
    log.append(el("div", { class: "day", text: day }));
  }
  const isBot = m.from === state.world.bot.id;
  const sender = state.people.get(m.from);
  const who = el("div", { class: "who" },
    el("span", { text: m.from_name }), roleBadge(sender),
    el("span", { class: "time", text: timeFmt.format(date) }));
  const bubble = el("div", { class: "bubble", text: m.text });
  if (m.mentions && m.mentions.length) {
    bubble.title = `@ ${m.mentions.map(nameOf).join("、")}`;
  }
  const atBottom = log.scrollHeight - log.scrollTop - log.clientHeight < 60;
  log.append(el("div", { class: `msg ${isBot ? "bot" : "mine"}`, "data-seq": String(m.seq) }, who, bubble));
  if (atBottom || !isBot) log.scrollTop = log.scrollHeight;
}

async function pollForever() {
  for (;;) {
    const started = Date.now();
    try {
      const url = `${API}/messages?conversation=${encodeURIComponent(state.id)}&after=${state.after}&wait=25`;
      const data = await getJSON(url);
      setStatus(data.connected);
      for (const m of data.messages) {
        if (m.seq > state.after) { renderMessage(m); state.after = m.seq; }
      }
      if (!data.messages.length && Date.now() - started < 1000) await sleep(1000);
    } catch (err) {
      setStatus(null);
      await sleep(2000);
    }
  }
}

function fillSelect(select, options, keep) {
  const previous = keep ? select.value : null;
  select.replaceChildren(...options.map(([value, label]) => el("option", { value, text: label })));
  if (previous && options.some(([value]) => value === previous)) select.value = previous;
}

function describe(id) {
  const p = state.people.get(id);
  if (!p) return id;
  return p.role === "officer" ? `${p.name}（民警）` : p.name;
}

function renderRoomSide() {
  const room = currentRoom();
  const bot = state.world.bot.id;
  $("title").textContent = room.topic;
  document.title = `${room.topic} · 公号沙盒`;
  $("subtitle").textContent = `${room.id} · 群主 ${nameOf(room.owner)}`;
  $("member-count").textContent = `（${room.members.length}）`;
  $("members").replaceChildren(...room.members.map((id) => el("li", {},
    el("span", { text: nameOf(id) }), roleBadge(state.people.get(id)),
    id === room.owner ? el("span", { class: "badge owner", text: "群主" }) : null)));

  const speakers = room.members.filter((id) => id !== bot)
    .sort((a, b) => (state.people.get(b).role === "officer") - (state.people.get(a).role === "officer"));
  fillSelect($("speaker"), speakers.map((id) => [id, describe(id)]), true);
  const outsiders = state.world.contacts.filter((c) => !room.members.includes(c.id));
  fillSelect($("invite-who"), outsiders.map((c) => [c.id, describe(c.id)]), true);
  const removable = room.members.filter((id) => id !== room.owner && id !== bot);
  fillSelect($("remove-who"), removable.map((id) => [id, describe(id)]), true);
}

async function reloadWorld() {
  state.world = await getJSON(`${API}/world`);
  state.people = indexWorld(state.world);
  setStatus(state.world.connected);
}

async function manage(url, body, done) {
  try {
    await postJSON(url, body);
    $("manage-result").textContent = done;
    await reloadWorld();
    renderRoomSide();
  } catch (err) {
    $("manage-result").textContent = err.message;
  }
}

async function renderConversation() {
  const { kind, id } = parseLocation();
  state.kind = kind;
  state.id = id;
  await reloadWorld();
  const bot = state.world.bot;
  const speaker = $("speaker");

  if (kind === "room") {
    $("side").hidden = false;
    $("mention-wrap").hidden = false;
    $("mention").nextSibling.textContent = ` @${bot.name}`;
    const saved = localStorage.getItem(`speaker:${id}`);
    renderRoomSide();
    if (saved && currentRoom().members.includes(saved)) speaker.value = saved;
    speaker.addEventListener("change", () => localStorage.setItem(`speaker:${id}`, speaker.value));
    const room = () => currentRoom().id;
    $("invite").addEventListener("click", () => manage(`${API}/join`,
      { room: room(), contact: $("invite-who").value, inviter: speaker.value }, "已邀请入群"));
    $("remove").addEventListener("click", () => manage(`${API}/leave`,
      { room: room(), contact: $("remove-who").value, remover: currentRoom().owner }, "已移出群聊"));
    $("rename").addEventListener("click", () => manage(`${API}/topic`,
      { room: room(), topic: $("new-topic").value, changer: speaker.value }, "群名已修改"));
  } else {
    const person = state.people.get(id);
    $("title").textContent = `${person.name} ⇄ ${bot.name}`;
    document.title = `${person.name} 私聊 · 公号沙盒`;
    $("subtitle").textContent = `私聊 · 你正以「${person.name}」的身份发言${person.title ? ` · ${person.title}` : ""}`;
    fillSelect(speaker, [[person.id, describe(person.id)]], false);
    speaker.disabled = true;
  }

  const text = $("text");
  text.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      $("composer").requestSubmit();
    }
  });
  $("composer").addEventListener("submit", async (event) => {
    event.preventDefault();
    let body = text.value;
    if (!body.trim()) { $("error").textContent = "消息内容不能为空"; return; }
    const payload = { from: speaker.value, room: null, to: null, text: body, mentions: [] };
    if (kind === "room") {
      payload.room = id;
      if ($("mention").checked) {
        payload.mentions = [bot.id];
        const tag = `@${bot.name}`;
        if (!body.includes(tag)) payload.text = `${tag}\u2005${body}`;
      }
    } else {
      payload.to = bot.id;
    }
    $("send").disabled = true;
    try {
      await postJSON(`${API}/say`, payload);
      text.value = "";
      $("error").textContent = "";
    } catch (err) {
      $("error").textContent = err.message;
    } finally {
      $("send").disabled = false;
      text.focus();
    }
  });
  text.focus();
  pollForever();
}

// ---------------------------------------------------------------------- boot
(async () => {
  try {
    if (document.body.dataset.page === "index") {
      await renderIndex();
      setInterval(() => getJSON(`${API}/world`).then((w) => setStatus(w.connected), () => setStatus(null)), 5000);
    } else {
      await renderConversation();
    }
  } catch (err) {
    setStatus(null);
    document.querySelector("main").prepend(el("p", { class: "error", text: `加载失败：${err.message}` }));
  }
})();
