// The Baby Discord web client: REST for commands and messages, one Server-Sent Events stream
// (/api/events) for everything the session sees. User text is only ever set with textContent.
//
// Lossless across reconnects: the page remembers the last seq it showed in its room. A stream is
// reopened with that seq (or, entering a room it just joined, from the join), the server replays
// what came after it, and anything at or below it is ignored - so a reconnect, a room change or a
// server restart shows no gap and no duplicate. Scrolling up loads older messages a page at a time (the history API's `before=`
// cursor): they all have seqs below the first one shown, so nothing is shown twice at the seam.

const $ = (id) => document.getElementById(id);
const state = {
  session: localStorage.getItem("sessionId"),
  nick: localStorage.getItem("nickname"),
  room: null,
  lastSeq: 0,
  // The first seq shown in the room, and whether the room's history reaches no further back.
  firstSeq: null,
  atStart: true,
  loadingOlder: false,
  events: null,
};

// Messages asked for at a time, on entering a room and on each scroll to the top.
const PAGE = 50;

async function api(path, body) {
  const response = await fetch(path, {
    method: body === undefined ? "GET" : "POST",
    headers: { "content-type": "application/json", ...(state.session ? { authorization: `Bearer ${state.session}` } : {}) },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const reply = await response.json().catch(() => ({ success: false, error: response.statusText }));
  if (!reply.success) {
    const error = new Error(reply.error || `HTTP ${response.status}`);
    error.status = response.status;
    throw error;
  }
  return reply.data;
}

// ---- rendering -------------------------------------------------------------------------------

function time(iso) {
  const date = iso ? new Date(iso) : new Date();
  return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function lineElement({ kind, nick, text, at, seq }) {
  const li = document.createElement("li");
  li.className = kind;
  if (seq !== undefined) li.dataset.seq = seq;
  const stamp = document.createElement("span");
  stamp.className = "time";
  stamp.textContent = time(at);
  li.append(stamp);
  if (nick) {
    const who = document.createElement("span");
    who.className = "nick";
    who.textContent = nick;
    li.append(who);
  }
  li.append(document.createTextNode(text));
  return li;
}

function addLine(fields) {
  const list = $("messages");
  const atBottom = list.scrollHeight - list.scrollTop - list.clientHeight < 40;
  list.append(lineElement(fields));
  if (atBottom) list.scrollTop = list.scrollHeight;
}

function messageLine(m) {
  const mine = m.user.toLowerCase() === (state.nick || "").toLowerCase();
  return { kind: mine ? "message mine" : "message", nick: m.user, text: m.content, at: m.timestamp ?? m.createdAt, seq: m.seq };
}

function showMessage(m) {
  if (m.room !== state.room || m.seq <= state.lastSeq) return; // already shown
  state.lastSeq = m.seq;
  state.firstSeq ??= m.seq;
  addLine(messageLine(m));
}

// Puts the page of messages before the first one shown above it, keeping what the reader sees
// where it is.
async function loadOlder() {
  if (state.atStart || state.loadingOlder || !state.room) return;
  state.loadingOlder = true;
  const room = state.room;
  try {
    const { messages } = await api(`/api/rooms/${encodeURIComponent(room)}/history?limit=${PAGE}&before=${state.firstSeq}`);
    if (room !== state.room) return;
    const list = $("messages");
    const height = list.scrollHeight;
    list.prepend(...messages.map((m) => lineElement(messageLine(m))));
    list.scrollTop += list.scrollHeight - height;
    if (messages.length > 0) state.firstSeq = messages[0].seq;
    state.atStart = messages.length < PAGE;
  } catch (error) {
    addLine({ kind: "error", text: `Error: ${error.message}` });
  } finally {
    state.loadingOlder = false;
  }
}

function setStatus(text, kind) {
  const status = $("status");
  status.textContent = text;
  status.className = `status ${kind}`;
}

async function refreshRooms() {
  try {
    const { rooms } = await api("/api/rooms");
    const list = $("room-list");
    list.replaceChildren(...rooms.map((room) => {
      const li = document.createElement("li");
      const button = document.createElement("button");
      button.type = "button";
      button.setAttribute("aria-current", String(room.name === state.room));
      const name = document.createElement("span");
      name.textContent = `# ${room.name}`;
      const count = document.createElement("span");
      count.className = "count";
      count.textContent = room.memberCount;
      count.title = `${room.memberCount} online`;
      button.append(name, count);
      button.addEventListener("click", () => runCommand(`/join ${room.name}`));
      li.append(button);
      return li;
    }));
  } catch { /* the next refresh will tell */ }
}

async function refreshMembers() {
  if (!state.room) return $("member-list").replaceChildren();
  try {
    const { message } = await api("/api/command", { command: "/list" });
    const names = message.replace(/^Users in [^:]*: ?/, "").split(", ").filter(Boolean);
    $("member-list").replaceChildren(...names.map((name) => {
      const li = document.createElement("li");
      li.textContent = name;
      return li;
    }));
  } catch { /* ditto */ }
}

// ---- the stream ------------------------------------------------------------------------------

// Opens the session's stream: from the session's join of its room, or (`resume`) from the last
// seq shown.
function openStream(resume) {
  state.events?.close();
  const from = resume ? `&last_event_id=${state.lastSeq}` : "";
  const url = `/api/events?sessionId=${encodeURIComponent(state.session)}${from}`;
  const events = new EventSource(url);
  state.events = events;
  events.addEventListener("open", () => setStatus("online", "online"));
  events.addEventListener("connected", (e) => {
    const { room } = JSON.parse(e.data);
    if (room !== state.room) enterRoom(room); // the session moved (here or in another tab)
  });
  events.addEventListener("message", (e) => showMessage(JSON.parse(e.data)));
  events.addEventListener("system", (e) => {
    const { text } = JSON.parse(e.data);
    addLine({ kind: "system", text });
    refreshMembers();
    refreshRooms();
  });
  events.addEventListener("dm", (e) => {
    const { from, to, content } = JSON.parse(e.data);
    addLine({ kind: "dm", nick: `DM from ${from} → ${to}`, text: content });
  });
  events.addEventListener("reset", () => {
    addLine({ kind: "system", text: "Some messages are no longer available; showing what remains." });
  });
  events.addEventListener("error", () => {
    setStatus("reconnecting…", "offline");
    // EventSource retries on its own; if it gave up, the session may be gone (server restart).
    if (events.readyState === EventSource.CLOSED) setTimeout(recover, 1000);
  });
}

// After a failure: reuse the session if it still exists, else start a new one with the same
// nickname and go back to the same room, resuming from the last seq shown.
async function recover() {
  try {
    await api("/api/command", { command: "/list" });
  } catch (error) {
    if (error.status !== 401) return setTimeout(recover, 2000);
    try {
      await login(state.nick);
      if (state.room) await api("/api/command", { command: `/join ${state.room}` });
    } catch {
      return setTimeout(recover, 2000);
    }
  }
  openStream(true);
}

// Shows `room` from its recent history, then its stream: from the session's join when the page
// follows a join (the history just loaded reaches at least that far; a position of the history's
// would be the stream's previous room's as far as the server can tell, and get a reset), or from
// the history's last seq when the page opens on a session already in the room (`resume`).
async function enterRoom(room, resume = false) {
  state.room = room;
  state.lastSeq = 0;
  state.firstSeq = null;
  state.atStart = true;
  $("room-title").textContent = room ? `# ${room}` : "# no room";
  $("messages").replaceChildren();
  if (room) {
    const { messages } = await api(`/api/rooms/${encodeURIComponent(room)}/history?limit=${PAGE}`);
    messages.forEach(showMessage);
    state.atStart = messages.length < PAGE;
  }
  openStream(resume);
  refreshRooms();
  refreshMembers();
}

// ---- input -------------------------------------------------------------------------------------

async function runCommand(line) {
  try {
    const { message } = await api("/api/command", { command: line });
    if (line.startsWith("/") && message) addLine({ kind: "reply", text: message });
    if (/^\/(join|create|leave)\b/i.test(line)) {
      const match = message.match(/^(?:Joined room|Created and joined room): (\S+)/);
      const room = match ? match[1] : null;
      if (room !== state.room) await enterRoom(room); // unless the stream said so first
    } else if (/^\/nick\b/i.test(line)) {
      const match = message.match(/^You are now known as (\S+)/);
      if (match) rememberNick(match[1]);
    } else if (/^\/quit\b/i.test(line)) {
      forget();
    }
  } catch (error) {
    addLine({ kind: "error", text: `Error: ${error.message}` });
    if (error.status === 401) recover();
  }
}

async function send(text) {
  if (text.startsWith("/")) return runCommand(text);
  try {
    await api("/api/message", { content: text });
  } catch (error) {
    addLine({ kind: "error", text: `Error: ${error.message}` });
  }
}

function rememberNick(nick) {
  state.nick = nick;
  localStorage.setItem("nickname", nick);
  $("me").textContent = `Signed in as ${nick}`;
}

async function login(nick) {
  const data = await api("/api/connect", { nickname: nick });
  state.session = data.sessionId;
  localStorage.setItem("sessionId", data.sessionId);
  rememberNick(data.nickname);
}

function forget() {
  state.events?.close();
  localStorage.removeItem("sessionId");
  state.session = null;
  promptNickname();
}

function promptNickname() {
  const dialog = $("login");
  $("nickname").value = state.nick || "";
  if (!dialog.open) dialog.showModal();
  $("nickname").focus();
}

$("login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  try {
    await login($("nickname").value.trim());
    $("login").close();
    $("login-error").textContent = "";
    await enterRoom(null);
    $("input").focus();
  } catch (error) {
    $("login-error").textContent = error.message;
  }
});

$("messages").addEventListener("scroll", (e) => {
  if (e.target.scrollTop < 80) loadOlder();
});

$("send-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const text = $("input").value.trim();
  $("input").value = "";
  if (text) send(text);
});

$("create-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const name = $("new-room").value.trim();
  $("new-room").value = "";
  if (name) runCommand(`/create ${name}`);
});

// ---- start -------------------------------------------------------------------------------------

async function start() {
  setInterval(refreshRooms, 5000);
  if (!state.session) return promptNickname();
  try {
    const { message } = await api("/api/command", { command: "/list" });
    rememberNick(state.nick);
    const inRoom = message.match(/^Users in ([^:]+):/);
    await enterRoom(inRoom ? inRoom[1] : null, true);
  } catch {
    promptNickname();
  }
}

start();
