// The demo at `/`: a mesh call with one RTCPeerConnection per other member,
// negotiated with the "perfect negotiation" pattern over signaling.js.
import { FINAL_CODES, join } from "./signaling.js";

const ID_PATTERN = /^[A-Za-z0-9_-]{1,64}$/;
const LOG_LIMIT = 300;

const $ = (selector) => document.querySelector(selector);
const peers = new Map(); // peer id -> Peer
let session = null;
let localStream = null;

/**
 * The room named in `#room=...` (or a fresh random one), and the join ticket of
 * `#room=...&ticket=...`, if any. The address keeps only the room, so the link
 * to share carries no ticket (a ticket admits its holder, not everyone).
 */
function fromHash() {
  const params = new URLSearchParams(location.hash.slice(1));
  const named = params.get("room");
  const room = named && ID_PATTERN.test(named) ? named : randomName(10);
  if (room !== named || params.has("ticket")) history.replaceState(null, "", `#room=${room}`);
  return { room, ticket: params.get("ticket") || null };
}

/** What a person is told when the server refuses the join's ticket, or needs one. */
function ticketProblem(error, room) {
  if (error.code === "ticket_required") {
    return `This server admits only peers with a join ticket from its application (JOIN_SECRET or ` +
      `JOIN_PUBLIC_KEY is set), and this page has none. To try it: run ` +
      `".venv/bin/python -m signaling.tickets --room ${room}" in the service's repository, with the server's ` +
      `JOIN_SECRET exported, then open ` +
      `${location.origin}${location.pathname}#room=${room}&ticket=<the ticket>`;
  }
  if (error.code === "bad_ticket") {
    return `The server refused this page's join ticket: ${error.message}. A fresh join needs a new one ` +
      `(a single-use ticket admits one join).`;
  }
  return null;
}

function randomName(length) {
  const alphabet = "abcdefghijkmnpqrstuvwxyz23456789";
  return Array.from(crypto.getRandomValues(new Uint8Array(length)), (b) => alphabet[b % alphabet.length]).join("");
}

/**
 * The id, token and join ticket this tab had in this room. They are taken out
 * of sessionStorage on load and put back on pagehide, so a reload keeps its id
 * (and its ticket, which a fresh join needs again after the pagehide beacon
 * left the room) while a duplicated tab (which copies sessionStorage) gets its own.
 */
function takeIdentity(room, ticket) {
  const key = `signaling-demo:${room}`;
  const saved = JSON.parse(sessionStorage.getItem(key) ?? "null") ?? {};
  sessionStorage.removeItem(key);
  const kept = { ...saved, ticket: ticket ?? saved.ticket ?? null };
  addEventListener("pagehide", () => {
    if (session) {
      const { peerId, token, lastSeq } = session;
      sessionStorage.setItem(key, JSON.stringify({ peerId, token, lastSeq, ticket: kept.ticket }));
    }
  });
  return kept;
}

/**
 * This person's display name (protocol 1.2 meta): asked once, then kept in localStorage; a join ticket's
 * `meta` names the peer instead (the server ignores the page's).
 */
function displayName() {
  let name = localStorage.getItem("signaling-demo-name");
  if (!name) {
    name = (prompt("Your name, as the others in the room will see it:") || "").trim().slice(0, 40) ||
      `Guest ${randomName(4)}`;
    localStorage.setItem("signaling-demo-name", name);
  }
  return name;
}

/** The name to show for a member: its meta's `name`, else its id. */
function nameOf(id) {
  const meta = id === session?.peerId ? session.meta : session?.members.get(id);
  return typeof meta?.name === "string" && meta.name ? meta.name : id;
}

async function start() {
  const { room, ticket } = fromHash();
  addEventListener("hashchange", () => location.reload());
  const link = location.href;
  $("#room-name").textContent = room;
  $("#room-link").value = link;
  $("#copy-link").addEventListener("click", () => copyLink(link));
  $("#chat-form").addEventListener("submit", sendChat);
  setupMediaButton();

  const baseUrl = new URL(".", location.href).href;
  const saved = { ...takeIdentity(room, ticket), meta: { name: displayName() } };
  try {
    session = await join(baseUrl, room, saved);
  } catch (error) {
    if (error.code !== "peer_id_taken") {
      return showFatal(ticketProblem(error, room) ?? `Could not join room "${room}": ${error.message}`);
    }
    // Our old id lives on elsewhere (another tab holds it): take a new one.
    session = await join(baseUrl, room, { ticket: saved.ticket, meta: saved.meta }).catch((retry) =>
      showFatal(ticketProblem(retry, room) ?? `Could not join: ${retry.message}`));
    if (!session) return;
  }

  $("#my-id").textContent = nameOf(session.peerId);
  $("#my-id").dataset.peer = session.peerId;
  $("#my-id").title = session.peerId;
  renderMember(session.peerId, true);
  session.addEventListener("state", ({ detail }) => showSessionState(detail));
  // The application removed us (or banned our id): final, no rejoin; a reload must not try the old token.
  session.addEventListener("removed", ({ detail }) => {
    sessionStorage.removeItem(`signaling-demo:${room}`);
    for (const id of [...peers.keys()]) removePeer(id);
    showFatal(detail.code === "banned" ? `You may not join this room for now: ${detail.message}`
      : `You were removed from this room: ${detail.message}`);
  });
  session.addEventListener("error", ({ detail }) => {
    logEntry("sys", "", "error", detail.error.message);
    if (detail.fatal && !FINAL_CODES.has(detail.error.code)) { // a removal said so already
      showFatal(ticketProblem(detail.error, room) ?? `Disconnected from the signaling service: ${detail.error.message}`);
    }
  });
  session.addEventListener("peer-joined", ({ detail }) => {
    logEntry("in", detail.peerId, "peer-joined", "");
    addPeer(detail.peerId);
  });
  session.addEventListener("peer-left", ({ detail }) => {
    logEntry("in", detail.peerId, "peer-left", detail.reason);
    removePeer(detail.peerId);
    if (detail.reason === "removed") addChatLine("", `${detail.peerId} was removed from the room`);
  });
  session.addEventListener("message", ({ detail }) => onEnvelope(detail));
  session.addEventListener("receive-mode", ({ detail }) => logReceiveMode(detail));
  showSessionState({ state: session.state });

  // A resumed session's peers still hold connections to our previous page: ask them to start over.
  if (session.resumed) await session.broadcast("hello").catch(() => {});
  for (const id of session.peers) if (!peers.has(id)) addPeer(id);
}

/** Sends a signaling envelope and logs it. */
function signal(to, type, data) {
  logEntry("out", to, type, summarize(type, data));
  session.send(to, type, data).catch((error) => logEntry("sys", to, "send failed", error.message));
}

function onEnvelope({ from, type, data }) {
  logEntry("in", from, type, summarize(type, data));
  if (type === "hello") {
    addPeer(from);
    return;
  }
  const peer = peers.get(from) ?? (session.peers.has(from) ? addPeer(from) : null);
  if (!peer) return;
  // Handle one envelope at a time: each awaits the connection's previous step.
  peer.queue = peer.queue
    .then(() => handleSignal(peer, type, data))
    .catch((error) => logEntry("sys", from, "error", error.message));
}

/** One peer connection, with the state perfect negotiation needs. */
function addPeer(id) {
  removePeer(id);
  const pc = new RTCPeerConnection({ iceServers: session.iceServers });
  const peer = {
    id,
    pc,
    // Any rule both sides compute alike will do; the polite side yields on glare.
    polite: session.peerId < id,
    makingOffer: false,
    ignoreOffer: false,
    settingRemoteAnswer: false,
    queue: Promise.resolve(),
    channel: null,
    li: renderMember(id, false),
    tile: renderTile(id),
  };
  peers.set(id, peer);

  pc.onnegotiationneeded = async () => {
    try {
      peer.makingOffer = true;
      await pc.setLocalDescription();
      signal(id, "description", pc.localDescription.toJSON());
    } catch (error) {
      logEntry("sys", id, "error", error.message);
    } finally {
      peer.makingOffer = false;
    }
  };
  pc.onicecandidate = ({ candidate }) => candidate && signal(id, "candidate", candidate.toJSON());
  pc.oniceconnectionstatechange = () => pc.iceConnectionState === "failed" && pc.restartIce();
  pc.onconnectionstatechange = () => showPeerState(peer);
  pc.ontrack = ({ track, streams }) => showRemoteTrack(peer, track, streams[0]);

  // The impolite side opens the first negotiation; the polite side adds its
  // channel and tracks when that offer arrives. Both offering at once would be
  // settled by perfect negotiation, but Chromium sometimes never gathers
  // candidates after rolling back a brand-new connection's first offer.
  if (!peer.polite) attachLocal(peer);
  showPeerState(peer);
  updateRoomSummary();
  return peer;
}

/** Adds the chat channel and any camera tracks; either one makes the connection negotiate. */
function attachLocal(peer) {
  // Negotiated with the same id on both sides, so neither has to wait for the other's "datachannel".
  peer.channel = peer.pc.createDataChannel("chat", { negotiated: true, id: 0 });
  peer.channel.onopen = () => showPeerState(peer);
  peer.channel.onclose = () => showPeerState(peer);
  peer.channel.onmessage = ({ data }) => addChatLine(peer.id, String(data));
  if (localStream) for (const track of localStream.getTracks()) peer.pc.addTrack(track, localStream);
}

/** Perfect negotiation: the impolite side ignores a colliding offer, the polite side rolls back. */
async function handleSignal(peer, type, data) {
  const { pc } = peer;
  if (type === "description") {
    const readyForOffer = !peer.makingOffer && (pc.signalingState === "stable" || peer.settingRemoteAnswer);
    const collision = data.type === "offer" && !readyForOffer;
    peer.ignoreOffer = !peer.polite && collision;
    if (peer.ignoreOffer) return;
    peer.settingRemoteAnswer = data.type === "answer";
    await pc.setRemoteDescription(data);
    peer.settingRemoteAnswer = false;
    if (data.type === "offer") {
      if (!peer.channel) attachLocal(peer);
      await pc.setLocalDescription();
      signal(peer.id, "description", pc.localDescription.toJSON());
    }
  } else if (type === "candidate") {
    try {
      await pc.addIceCandidate(data);
    } catch (error) {
      // Candidates of an offer we ignored fail to apply; that is expected.
      if (!peer.ignoreOffer) throw error;
    }
  }
}

function removePeer(id) {
  const peer = peers.get(id);
  if (!peer) return;
  peers.delete(id);
  peer.pc.close();
  peer.li.remove();
  peer.tile.remove();
  updateRoomSummary();
}

// --- media ---------------------------------------------------------------

function setupMediaButton() {
  const button = $("#media-toggle");
  if (!navigator.mediaDevices?.getUserMedia) {
    button.disabled = true;
    button.title = "The camera needs a secure page (https or localhost)";
    return;
  }
  button.addEventListener("click", () => (localStream ? stopMedia() : startMedia()));
}

async function startMedia() {
  const button = $("#media-toggle");
  button.disabled = true;
  try {
    localStream = await navigator.mediaDevices.getUserMedia({ video: true, audio: true });
  } catch (error) {
    showBanner(`Camera or microphone unavailable: ${error.message}`);
    return;
  } finally {
    button.disabled = false;
  }
  $("#local-video").srcObject = localStream;
  $("#local-tile").classList.add("has-video");
  button.textContent = "Stop camera and microphone";
  button.classList.remove("primary");
  // A peer without a channel yet gets the tracks with it, in attachLocal.
  for (const { pc, channel } of peers.values()) {
    if (channel) for (const track of localStream.getTracks()) pc.addTrack(track, localStream);
  }
}

function stopMedia() {
  for (const { pc } of peers.values()) {
    for (const sender of pc.getSenders()) if (sender.track) pc.removeTrack(sender);
  }
  for (const track of localStream.getTracks()) track.stop();
  localStream = null;
  $("#local-video").srcObject = null;
  $("#local-tile").classList.remove("has-video");
  const button = $("#media-toggle");
  button.textContent = "Start camera and microphone";
  button.classList.add("primary");
}

function showRemoteTrack(peer, track, stream = new MediaStream([track])) {
  const video = peer.tile.querySelector("video");
  if (video.srcObject !== stream) video.srcObject = stream;
  const update = () => peer.tile.classList.toggle("has-video", stream.getVideoTracks().some((t) => !t.muted));
  track.onunmute = update;
  track.onmute = update;
  stream.onremovetrack = update;
  update();
  video.play().catch(() => {
    // Autoplay with sound needs a click on this page first: play muted and offer one.
    video.muted = true;
    video.play().catch(() => {});
    const unmute = peer.tile.querySelector(".unmute");
    unmute.hidden = false;
    unmute.onclick = () => {
      video.muted = false;
      unmute.hidden = true;
    };
  });
}

// --- chat ----------------------------------------------------------------

function sendChat(event) {
  event.preventDefault();
  const input = $("#chat-input");
  const text = input.value.trim();
  if (!text) return;
  const open = [...peers.values()].filter((p) => p.channel?.readyState === "open");
  for (const peer of open) peer.channel.send(text);
  addChatLine(session.peerId, text);
  input.value = "";
}

function addChatLine(from, text) {
  const line = document.createElement("li");
  line.className = from === session.peerId ? "chat-line mine" : "chat-line";
  line.dataset.from = from;
  const who = document.createElement("span");
  who.className = "who";
  who.textContent = from === session.peerId ? "You" : from ? nameOf(from) : "";
  who.style.color = colorFor(from);
  const body = document.createElement("span");
  body.className = "text";
  body.textContent = text;
  line.append(who, body);
  const log = $("#chat-log");
  log.append(line);
  log.scrollTop = log.scrollHeight;
}

// --- rendering -------------------------------------------------------------

function renderMember(id, isMe) {
  const li = $("#member-template").content.firstElementChild.cloneNode(true);
  li.dataset.peer = id;
  li.title = id;
  li.classList.toggle("me", isMe);
  li.querySelector(".avatar").style.background = colorFor(id);
  li.querySelector(".avatar").textContent = nameOf(id).slice(0, 1).toUpperCase();
  li.querySelector(".name").textContent = isMe ? `${nameOf(id)} (you)` : nameOf(id);
  $("#members").append(li);
  return li;
}

function renderTile(id) {
  const tile = $("#tile-template").content.firstElementChild.cloneNode(true);
  tile.dataset.peer = id;
  tile.querySelector("video").dataset.peer = id;
  tile.querySelector("figcaption").textContent = nameOf(id);
  tile.style.setProperty("--accent", colorFor(id));
  $("#videos").append(tile);
  return tile;
}

function showPeerState(peer) {
  const state = peer.pc.connectionState;
  const channel = peer.channel?.readyState ?? "new";
  peer.li.dataset.state = state;
  peer.li.dataset.channel = channel;
  peer.li.querySelector(".state").textContent = state;
  peer.li.querySelector(".channel").textContent = channel === "open" ? "chat" : "";
  peer.tile.dataset.state = state;
  updateRoomSummary();
}

function updateRoomSummary() {
  $("#member-count").textContent = String(peers.size + 1);
  $("#empty-hint").hidden = peers.size > 0;
  $("#chat-send").disabled = ![...peers.values()].some((p) => p.channel?.readyState === "open");
}

function showSessionState({ state, delay }) {
  const badge = $("#session-state");
  badge.dataset.state = state;
  badge.textContent = state === "reconnecting" ? `reconnecting in ${(delay / 1000).toFixed(1)} s` : state;
}

function showBanner(text) {
  const banner = $("#banner");
  banner.textContent = text;
  banner.hidden = false;
}

function showFatal(text) {
  showBanner(text);
  showSessionState({ state: "closed" });
}

async function copyLink(link) {
  const button = $("#copy-link");
  try {
    await navigator.clipboard.writeText(link);
  } catch {
    // No clipboard API on plain-http pages: select the text for a manual copy.
    $("#room-link").select();
    document.execCommand("copy");
  }
  button.textContent = "Copied";
  setTimeout(() => (button.textContent = "Copy link"), 1500);
}

/** A stable hue per id, so a peer has the same colour everywhere on the page. */
function colorFor(id) {
  let hash = 0;
  for (const char of id) hash = (hash * 31 + char.codePointAt(0)) >>> 0;
  return `hsl(${hash % 360} 55% 45%)`;
}

// --- signaling log ---------------------------------------------------------

function logEntry(direction, peer, type, summary) {
  const entry = document.createElement("li");
  entry.className = direction;
  entry.dataset.type = type;
  const arrow = { in: "←", out: "→", sys: "•" }[direction];
  const time = new Date().toISOString().slice(11, 23);
  for (const [cls, text] of [["time", time], ["dir", `${arrow} ${peer}`], ["type", type], ["summary", summary]]) {
    const span = document.createElement("span");
    span.className = cls;
    span.textContent = text;
    entry.append(span);
  }
  const log = $("#envelope-log");
  log.prepend(entry);
  while (log.children.length > LOG_LIMIT) log.lastElementChild.remove();
  $("#log-count").textContent = String(Number($("#log-count").textContent) + 1);
}

/** Says in the log how envelopes arrive, and why it changed (signaling.js's `receive-mode` event). */
function logReceiveMode({ mode, reason }) {
  const why = {
    "stream-open": "one open response (Server-Sent Events)",
    "server-sends-json": "the server does not stream",
    "no-first-byte": "no byte of the stream came in time (a buffering proxy?); streaming again in 5 min",
  }[reason] ?? reason;
  logEntry("sys", "", "receive", `${mode === "stream" ? "by stream" : "by polling"}: ${why}`);
}

/** One line about an envelope's data: what it is, not all of it. */
function summarize(type, data) {
  if (type === "description" && data?.sdp) return `${data.type}, ${data.sdp.length} bytes of SDP`;
  if (type === "candidate" && data?.candidate) return data.candidate.split(" ").slice(4, 8).join(" ");
  return data == null ? "" : JSON.stringify(data).slice(0, 120);
}

start();
