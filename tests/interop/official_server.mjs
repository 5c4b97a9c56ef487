#!/usr/bin/env node
/**
 * Interop test harness: the OFFICIAL Wechaty puppet-service gRPC server
 * (npm `wechaty-puppet-service`) wrapping `wechaty-puppet-mock`, plus a tiny
 * HTTP JSON control API so that Python tests can drive the mock world.
 *
 * Usage:
 *   node official_server.mjs --world world.json [--grpc-port 0] [--http-port 0]
 *                            [--token insecure_<uuid>] [--heartbeat-ms 15000]
 *                            [--exit-on-stdin-eof]
 *   (instead of --world, the world JSON text may be given in $GONGHAO_INTEROP_WORLD)
 *
 * World JSON (same shape as the Python side):
 *   {"bot": {"id": "...", "name": "..."},
 *    "contacts": [{"id": "...", "name": "..."}, ...],
 *    "rooms": [{"id": "xxx@chatroom", "topic": "...", "members": ["id", ...]}]}
 *   The bot is appended to every room's member list if missing (it can only
 *   talk in rooms it belongs to). Room ids must contain "@" (the mock tells
 *   rooms from contacts that way).
 *
 * stdout carries exactly one line, printed once both servers listen and the
 * bot is logged in:
 *   {"grpc_port": N, "http_port": M, "token": "insecure_<uuid>", "pid": P}
 * All logging (including the wechaty libraries' console.info/log) goes to stderr.
 *
 * Control API (127.0.0.1:http_port, JSON in and out):
 *   GET  /health                -> {"ok": true, "logged_in": bool, "ready": bool, ...}
 *   POST /say {"from", "room"|null, "text", "mentions": [...]}
 *                               -> {"message_id", "seq"}   (a contact speaks; the bot gets a message event)
 *   GET  /messages?conversation=ID&after=SEQ
 *                               -> {"messages": [{seq, id, conversation, from, to, room, text, mentions,
 *                                                  timestamp, type, direction}], "last_seq": N}
 *      `conversation` is the room id, or the other party's contact id for private chats;
 *      `direction` is "bot" for messages the bot sent, "injected" for /say.
 *
 * Token: the server compares the client's token, verbatim, with ours. python-wechaty
 * sends it as the HTTP/2 `:authority` header, which wechaty-puppet-service copies into
 * `authorization: Wechaty <token>` (no TLS). Any string works on the server side; we use
 * the `insecure_<uuid-v4>` shape that wechaty-token / Node clients expect for non-TLS.
 *
 * Exits cleanly on SIGTERM / SIGINT, and with --exit-on-stdin-eof also when stdin
 * reaches EOF (the parent died without stopping us).
 */

import fs from 'node:fs'
import http from 'node:http'
import crypto from 'node:crypto'
import { parseArgs } from 'node:util'

/* ---------------------------------------------------------------- stdout hygiene */

// The wechaty libraries log through brolog, which uses console.info / console.log
// (stdout). stdout is our protocol channel, so send every console method to stderr.
const toStderr = (...args) => process.stderr.write(args.map(String).join(' ') + '\n')
console.log = toStderr
console.info = toStderr
console.debug = toStderr
// console.warn / console.error already write to stderr.

process.env.WECHATY_LOG = process.env.WECHATY_LOG || 'warn'
process.env.BROLOG_LEVEL = process.env.BROLOG_LEVEL || process.env.WECHATY_LOG

const { PuppetServer } = await import('wechaty-puppet-service')
const { PuppetMock, mock: { Mocker } } = await import('wechaty-puppet-mock')
const PUPPET = await import('wechaty-puppet')
const { grpc } = await import('wechaty-grpc')

PUPPET.log.level(process.env.WECHATY_LOG)

/* ---------------------------------------------------------------- arguments */

const { values: args } = parseArgs({
  options: {
    world: { type: 'string' },
    'grpc-port': { type: 'string', default: '0' },
    'http-port': { type: 'string', default: '0' },
    token: { type: 'string' },
    'heartbeat-ms': { type: 'string', default: '15000' },
    'exit-on-stdin-eof': { type: 'boolean', default: false },
  },
  strict: true,
})

function fail (msg) {
  process.stderr.write(`official_server: ${msg}\n`)
  process.exit(2)
}

let worldText
if (args.world) {
  worldText = fs.readFileSync(args.world, 'utf8')
} else if (process.env.GONGHAO_INTEROP_WORLD) {
  worldText = process.env.GONGHAO_INTEROP_WORLD
} else {
  fail('no world: pass --world FILE or set GONGHAO_INTEROP_WORLD')
}
const world = JSON.parse(worldText)
validateWorld(world)

const TOKEN = args.token || `insecure_${crypto.randomUUID()}`
const GRPC_PORT = Number(args['grpc-port'])
const HTTP_PORT = Number(args['http-port'])
const HEARTBEAT_MS = Number(args['heartbeat-ms'])

function validateWorld (w) {
  if (!w || typeof w !== 'object') fail('world must be a JSON object')
  if (!w.bot || !w.bot.id || !w.bot.name) fail('world.bot needs id and name')
  const ids = new Set([w.bot.id])
  for (const c of w.contacts || []) {
    if (!c.id || !c.name) fail(`contact needs id and name: ${JSON.stringify(c)}`)
    if (c.id.includes('@')) fail(`contact id must not contain "@" (the mock would treat it as a room): ${c.id}`)
    if (ids.has(c.id)) fail(`duplicate contact id: ${c.id}`)
    ids.add(c.id)
  }
  for (const r of w.rooms || []) {
    if (!r.id || !r.id.includes('@')) fail(`room id must contain "@": ${r.id}`)
    if (typeof r.topic !== 'string') fail(`room needs a topic: ${r.id}`)
    for (const m of r.members || []) {
      if (!ids.has(m)) fail(`room ${r.id} member ${m} is not a contact (or the bot)`)
    }
  }
}

/* ---------------------------------------------------------------- the mock world */

const mocker = new Mocker()

function contactPayload (c) {
  // Deterministic payloads (the mock's defaults come from faker).
  return {
    id: c.id,
    name: c.name,
    alias: c.alias || '',
    avatar: c.avatar || '',
    gender: c.gender ?? PUPPET.types.ContactGender.Unknown,
    type: c.type ?? PUPPET.types.Contact.Individual,
    friend: c.friend ?? true,
    phone: c.phone || [],
    address: '',
    city: '',
    province: '',
    signature: '',
    star: false,
    weixin: c.weixin || c.id,
  }
}

const botMock = mocker.createContact(contactPayload(world.bot))
for (const c of world.contacts || []) {
  mocker.createContact(contactPayload(c))
}
for (const r of world.rooms || []) {
  const members = [...(r.members || [])]
  if (!members.includes(world.bot.id)) members.push(world.bot.id)
  mocker.createRoom({
    id: r.id,
    topic: r.topic,
    memberIdList: members,
    adminIdList: r.admins || [],
    ownerId: r.owner || undefined,
    avatar: '',
  })
}

const isRoom = id => mocker.cacheRoomPayload.has(id)
const isContact = id => mocker.cacheContactPayload.has(id)

/* ---------------------------------------------------------------- message log */

let seq = 0
const messageLog = []

/**
 * Create a Text message in the mock and emit the puppet `message` event, like
 * ContactMock.say().to() does, but returning the id (the mock's own
 * messageSendText returns nothing and drops mentions).
 */
function createTextMessage ({ talkerId, roomId, listenerId, text, mentionIdList, direction }) {
  const id = `mock_msg_${crypto.randomUUID()}`
  const timestamp = Date.now() // epoch ms
  const payload = roomId
    ? { id, talkerId, roomId, text, timestamp, type: PUPPET.types.Message.Text, mentionIdList: mentionIdList || [] }
    : { id, talkerId, listenerId, text, timestamp, type: PUPPET.types.Message.Text }
  // Log first, so that a client reacting to the event always finds it in /messages.
  const entry = {
    seq: ++seq,
    id,
    conversation: roomId || (talkerId === world.bot.id ? listenerId : talkerId),
    from: talkerId,
    to: listenerId || null,
    room: roomId || null,
    text,
    mentions: mentionIdList || [],
    timestamp,
    type: payload.type,
    direction,
  }
  messageLog.push(entry)
  mocker.MessageMock.create(payload) // stores the payload: MessagePayload(id) resolves
  puppet.emit('message', { messageId: id })
  return entry
}

class GonghaoPuppetMock extends PuppetMock {
  /**
   * What the bot sends through gRPC MessageSendText. The mock's own version
   * ignores mentions and returns no message id. Like the mock (and real
   * puppets), the bot's own message is also emitted as a `message` event.
   */
  async messageSendText (conversationId, text, mentionIdList) {
    if (!this.isLoggedIn) throw new Error('not logged in')
    let entry
    if (isRoom(conversationId)) {
      entry = createTextMessage({
        talkerId: this.currentUserId, roomId: conversationId, text, mentionIdList, direction: 'bot',
      })
    } else if (isContact(conversationId)) {
      entry = createTextMessage({
        talkerId: this.currentUserId, listenerId: conversationId, text, direction: 'bot',
      })
    } else {
      throw new Error(`messageSendText: unknown conversation ${conversationId}`)
    }
    return entry.id
  }
}

const puppet = new GonghaoPuppetMock({ mocker })

let heartbeatTimer
/**
 * A mocker "environment" runs on every puppet start (the client's Start RPC
 * restarts the puppet): log the bot in, then emit `ready` (the mock never does).
 */
mocker.use(function gonghaoEnvironment (m) {
  m.login(botMock)
  setImmediate(() => {
    if (puppet.isLoggedIn) puppet.emit('ready', { data: 'ready' })
  })
  if (HEARTBEAT_MS > 0) {
    heartbeatTimer = setInterval(() => {
      if (puppet.isLoggedIn) puppet.emit('heartbeat', { data: 'gonghao mock heartbeat' })
    }, HEARTBEAT_MS)
  }
  return () => clearInterval(heartbeatTimer)
})

/* ---------------------------------------------------------------- gRPC server */

// PuppetServer does not expose the port it bound; capture it when port 0 is used.
let boundGrpcPort
const origBindAsync = grpc.Server.prototype.bindAsync
grpc.Server.prototype.bindAsync = function (port, creds, cb) {
  return origBindAsync.call(this, port, creds, (err, actualPort) => {
    if (!err) boundGrpcPort = actualPort
    cb(err, actualPort)
  })
}

const puppetServer = new PuppetServer({
  endpoint: `127.0.0.1:${GRPC_PORT}`,
  puppet,
  token: TOKEN,
  tls: { disable: true },
})

/* ---------------------------------------------------------------- HTTP control API */

function sendJson (res, status, body) {
  const data = Buffer.from(JSON.stringify(body))
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', 'content-length': data.length })
  res.end(data)
}

async function readJson (req) {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
  const text = Buffer.concat(chunks).toString('utf8')
  return text ? JSON.parse(text) : {}
}

function handleSay (body) {
  const { from, room, text, mentions } = body
  if (!isContact(from) || from === world.bot.id) {
    return [400, { error: `unknown contact (or the bot itself): ${from}` }]
  }
  if (typeof text !== 'string') return [400, { error: 'text must be a string' }]
  if (!puppet.isLoggedIn) return [409, { error: 'the bot is not logged in' }]
  let entry
  if (room) {
    if (!isRoom(room)) return [400, { error: `unknown room: ${room}` }]
    const members = mocker.cacheRoomPayload.get(room).memberIdList
    if (!members.includes(from)) return [400, { error: `${from} is not a member of ${room}` }]
    for (const m of mentions || []) {
      if (!isContact(m)) return [400, { error: `unknown mentioned contact: ${m}` }]
    }
    entry = createTextMessage({ talkerId: from, roomId: room, text, mentionIdList: mentions || [], direction: 'injected' })
  } else {
    entry = createTextMessage({ talkerId: from, listenerId: world.bot.id, text, direction: 'injected' })
  }
  return [200, { message_id: entry.id, seq: entry.seq }]
}

const httpServer = http.createServer(async (req, res) => {
  try {
    const url = new URL(req.url, 'http://127.0.0.1')
    if (req.method === 'GET' && url.pathname === '/health') {
      return sendJson(res, 200, {
        ok: true,
        logged_in: puppet.isLoggedIn,
        ready: puppet.readyIndicator.value(),
        bot_id: world.bot.id,
        last_seq: seq,
      })
    }
    if (req.method === 'POST' && url.pathname === '/say') {
      const [status, body] = handleSay(await readJson(req))
      return sendJson(res, status, body)
    }
    if (req.method === 'GET' && url.pathname === '/messages') {
      const conversation = url.searchParams.get('conversation')
      const after = Number(url.searchParams.get('after') || 0)
      const messages = messageLog.filter(m => m.seq > after && (!conversation || m.conversation === conversation))
      return sendJson(res, 200, { messages, last_seq: seq })
    }
    return sendJson(res, 404, { error: `no route: ${req.method} ${url.pathname}` })
  } catch (e) {
    return sendJson(res, 500, { error: String(e && e.stack || e) })
  }
})

/* ---------------------------------------------------------------- lifecycle */

let stopping = false
async function shutdown (reason) {
  if (stopping) return
  stopping = true
  process.stderr.write(`official_server: shutting down (${reason})\n`)
  const force = setTimeout(() => process.exit(0), 5000)
  force.unref()
  try {
    httpServer.close()
    httpServer.closeAllConnections?.()
    await puppetServer.stop()
    if (puppet.state.active()) await puppet.stop()
  } catch (e) {
    process.stderr.write(`official_server: shutdown error: ${e && e.stack || e}\n`)
  }
  process.exit(0)
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
if (args['exit-on-stdin-eof']) {
  // The Python harness keeps our stdin open; EOF means it went away without
  // stopping us, so do not linger as an orphan holding ports.
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.on('error', () => shutdown('stdin error'))
  process.stdin.resume()
}

try {
  // Like `wechaty gateway`: the puppet is running (and logged in) before the
  // gRPC server accepts clients. A client's Stop/Start RPCs restart it.
  await puppet.start()
  await new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('bot did not log in')), 10000)
    const check = () => (puppet.isLoggedIn ? (clearTimeout(t), resolve()) : setTimeout(check, 10))
    check()
  })
  await puppetServer.start()
  grpc.Server.prototype.bindAsync = origBindAsync
  await new Promise((resolve, reject) => {
    httpServer.once('error', reject)
    httpServer.listen(HTTP_PORT, '127.0.0.1', resolve)
  })
} catch (e) {
  process.stderr.write(`official_server: startup failed: ${e && e.stack || e}\n`)
  process.exit(1)
}

process.stdout.write(JSON.stringify({
  grpc_port: boundGrpcPort,
  http_port: httpServer.address().port,
  token: TOKEN,
  pid: process.pid,
}) + '\n')
