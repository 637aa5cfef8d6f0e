// A TypeScript page's use of every declaration of the signaling-client package, compiled with
// `tsc --strict --noEmit` by test_npm_package.py against the installed package. Each `@ts-expect-error`
// is a misuse the declarations must refuse (tsc fails when such a line compiles).
import {
  join,
  SignalingError,
  FINAL_CODES,
  type FinalCode,
  type Meta,
  type RemovedDetail,
  type BroadcastResult,
  type ClientErrorCode,
  type Envelope,
  type ErrorCode,
  type ErrorDetail,
  type HttpErrorCode,
  type JoinOptions,
  type PeerJoinedDetail,
  type PeerLeftDetail,
  type PeerLeftReason,
  type ReceiveMode,
  type ReceiveModeDetail,
  type ReceiveModeReason,
  type ReceiveOption,
  type SendResult,
  type ServerErrorCode,
  type Session,
  type SessionEventMap,
  type SessionState,
  type StateDetail,
  type StreamTiming,
  type Backoff,
} from "signaling-client";

const receive: ReceiveOption = "auto";
const streamTiming: Partial<StreamTiming> = { heartbeat: 15000, grace: 10000, firstByte: 5000, pollFor: 300000 };
const backoff: Backoff = { base: 500, max: 10000 };
const options: JoinOptions = {
  peerId: "alice",
  token: "earlier.token",
  lastSeq: 0,
  ticket: "a.ticket",
  getTicket: async () => "a.fresh.ticket",
  fetch: (input, init) => fetch(input, init),
  backoff,
  sendRetries: 5,
  batchBytes: 65536,
  receive,
  streamTiming,
  meta: { name: "Alice", avatar: null },
};
// @ts-expect-error: not a way to receive
const wrongReceive: JoinOptions = { receive: "sometimes" };
// @ts-expect-error: the peer id is a string
const wrongPeerId: JoinOptions = { peerId: 7 };

function explain(error: unknown): string {
  if (!(error instanceof SignalingError)) return String(error);
  const server: ServerErrorCode | null = error.code === "ticket_required" || error.code === "room_full" ? error.code : null;
  const client: ClientErrorCode | null = error.code === "network_error" ? error.code : null;
  const http: HttpErrorCode | null = error.code === "http_502" ? error.code : null;
  // @ts-expect-error: no such code
  const typo: boolean = error.code === "tiket_required";
  const retry: number | null = error.retryAfter;
  const status: number = error.status;
  const name: "SignalingError" = error.name;
  return `${name} ${status} ${error.message} ${server ?? client ?? http} ${retry} ${typo}`;
}

async function use(session: Session): Promise<void> {
  const { baseUrl, room, peerId, token, lastSeq, resumed, iceServers } = session;
  const state: SessionState = session.state;
  const mode: ReceiveMode | null = session.receiveMode;
  const peers: string[] = [...session.peers];
  const names: string[] = [...session.members].map(([id, meta]) => String(meta?.name ?? id));
  const own: Meta | null = session.meta;
  // @ts-expect-error: the members are read, never changed by hand
  session.peers.add("mallory");
  new RTCPeerConnection({ iceServers });

  const sent: SendResult = await session.send("bob", "offer", { sdp: "v=0" });
  const seq: number = sent.seq;
  await session.send("bob", "bye");
  const report: BroadcastResult = await session.broadcast("hello", [1, 2, 3]);
  const reached: string[] = [...report.delivered_to, ...report.mailbox_full];
  // @ts-expect-error: send takes the recipient first
  await session.send({ to: "bob" }, "offer");

  session.addEventListener("message", (event) => {
    const envelope: Envelope = event.detail;
    const from: string = envelope.from;
    const when: number = envelope.ts;
    const data: unknown = envelope.data;
    console.log(envelope.seq, from, envelope.type, data, when);
  });
  session.addEventListener("peer-joined", ({ detail }) => {
    const joined: PeerJoinedDetail = detail;
    const meta: Meta | null = joined.meta;
    console.log(joined.peerId, meta?.name);
  });
  const onLeft = ({ detail }: SessionEventMap["peer-left"]) => {
    const left: PeerLeftDetail = detail;
    const reason: PeerLeftReason = left.reason;
    // @ts-expect-error: no such reason
    const kicked: boolean = reason === "kicked";
    console.log(left.peerId, kicked);
  };
  session.addEventListener("peer-left", onLeft);
  session.removeEventListener("peer-left", onLeft);
  session.addEventListener("state", ({ detail }) => {
    const change: StateDetail = detail;
    const delay: number | undefined = change.delay;
    console.log(change.state, delay);
  });
  session.addEventListener("error", ({ detail }) => {
    const failure: ErrorDetail = detail;
    const code: ErrorCode = failure.error.code;
    console.log(code, failure.fatal, explain(failure.error));
  });
  session.addEventListener("receive-mode", ({ detail }) => {
    const change: ReceiveModeDetail = detail;
    const reason: ReceiveModeReason = change.reason;
    console.log(change.mode, reason);
  });
  // @ts-expect-error: a message's detail is the envelope, which has no peerId
  session.addEventListener("message", ({ detail }) => console.log(detail.peerId));
  session.addEventListener("removed", ({ detail }) => {
    const removed: RemovedDetail = detail;
    const final: FinalCode = removed.code;
    console.log(final, removed.message, FINAL_CODES.has(final));
  });
  // @ts-expect-error: a removal is final, not a reason to rejoin
  const rejoin: FinalCode = "rejoined";
  session.addEventListener("some-other-event", (event: Event) => console.log(event.type));

  await session.leave();
  console.log(baseUrl, room, peerId, token, lastSeq, resumed, state, mode, peers, seq, reached, names, own, rejoin);
}

async function main(): Promise<void> {
  try {
    await use(await join("https://signal.example.com", "room", options));
    await use(await join(new URL("https://signal.example.com"), "room"));
  } catch (error) {
    console.log(explain(error));
  }
  // @ts-expect-error: the room is required
  await join("https://signal.example.com");
  console.log(wrongReceive, wrongPeerId, new SignalingError("by hand", { status: 0, code: "closed", retryAfter: null }));
}

void main();
