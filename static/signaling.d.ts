/**
 * Types of signaling.js, the browser client of the signaling service (protocol version 1, revision 1.2).
 *
 * The module exports three values, `join`, `SignalingError` and `FINAL_CODES`; everything else here is a type. What each
 * option and event means is said once, in signaling.js and docs/clients.md; here, what shape it has.
 * `make test` compiles a consumer that uses every declaration with `tsc --strict`
 * (tests/packaging/consumer.ts), then drives the installed package against a live server.
 */
/// <reference lib="dom" />

/** Codes of the server's error answers (docs/protocol.md); a test keeps the list equal to the server's. */
export type ServerErrorCode =
  | "backend_unavailable"
  | "bad_cursor"
  | "bad_field"
  | "bad_id"
  | "bad_idempotency_key"
  | "bad_json"
  | "bad_meta"
  | "bad_query"
  | "bad_request"
  | "bad_ticket"
  | "banned"
  | "expectation_failed"
  | "forbidden"
  | "header_too_large"
  | "idempotency_key_reused"
  | "internal_error"
  | "join_rate_limited"
  | "mailbox_full"
  | "method_not_allowed"
  | "not_found"
  | "not_joined"
  | "payload_too_large"
  | "peer_id_taken"
  | "peer_not_found"
  | "removed"
  | "request_timeout"
  | "reserved_type"
  | "room_full"
  | "send_rate_limited"
  | "server_busy"
  | "ticket_required"
  | "too_many_peers"
  | "too_many_rooms"
  | "unauthorized"
  | "unsupported_transfer_coding"
  | "uri_too_long";

/**
 * Codes the client gives itself: the network failed (`status` 0) or an answer was malformed (its status),
 * `getTicket` threw, the session was closed before a send went out.
 */
export type ClientErrorCode = "network_error" | "ticket_unavailable" | "closed";

/** An error answer without the server's JSON body (a proxy's page, say): `http_` and its status. */
export type HttpErrorCode = `http_${number}`;

export type ErrorCode = ServerErrorCode | ClientErrorCode | HttpErrorCode;

/** An HTTP or network failure: every rejection of `join`, `send`, `broadcast` and `leave`. */
export declare class SignalingError extends Error {
  constructor(message: string, options?: { status?: number; code?: ErrorCode; retryAfter?: number | null });
  readonly name: "SignalingError";
  /** The HTTP status; 0 when the network failed. */
  status: number;
  code: ErrorCode;
  /** The server's `Retry-After`, in seconds, when it sent one. */
  retryAfter: number | null;
}

/** How a session receives: stream and fall back to polls (the default), or only one of the two. */
export type ReceiveOption = "auto" | "stream" | "poll";

/** How envelopes arrive now. */
export type ReceiveMode = "stream" | "poll";

/** Why `receiveMode` changed. */
export type ReceiveModeReason = "stream-open" | "receive-option" | "server-sends-json" | "no-first-byte";

/** The state of a session; `connecting` only until `join` resolves. */
export type SessionState = "connecting" | "connected" | "reconnecting" | "rejoining" | "suspended" | "closed";

/** Milliseconds that rule a stream; `heartbeat` is the server's STREAM_HEARTBEAT. */
export interface StreamTiming {
  heartbeat: number;
  grace: number;
  firstByte: number;
  pollFor: number;
}

/** Retry timing, in ms: exponential backoff with jitter from `base`, capped at `max`. */
export interface Backoff {
  base: number;
  max: number;
}

/** The second argument's options of `join`; every one may be left out. */
export interface JoinOptions {
  /** This peer's id (else the server picks one, or the ticket's `sub` names it). */
  peerId?: string;
  /** An earlier session's `token`, to resume it (with its `peerId`). */
  token?: string;
  /** That earlier session's `lastSeq`, so that the resume is not handed again what it saw. */
  lastSeq?: number;
  /** A join ticket from the application, when the server requires them. */
  ticket?: string;
  /** Called before each join the session makes, for a fresh ticket. */
  getTicket?: () => string | Promise<string>;
  /** A stand-in for `fetch` (tests). */
  fetch?: typeof fetch;
  backoff?: Partial<Backoff>;
  /** How often a refused or failed send request is tried again (5). */
  sendRetries?: number;
  /** The most bytes of body in one batch request (65536): set it to a lower MAX_MESSAGE_BYTES of the server. */
  batchBytes?: number;
  receive?: ReceiveOption;
  streamTiming?: Partial<StreamTiming>;
  /** This peer's meta (protocol 1.2), e.g. `{ name: "Alice" }`; with tickets on, the ticket's wins. */
  meta?: Meta;
}

/** A peer's meta (protocol 1.2): a JSON object of at most 2,048 bytes, fixed for the peer's life. */
export type Meta = { [key: string]: unknown };

/** One envelope of the mailbox: a peer's send or broadcast (`message` events carry these). */
export interface Envelope {
  seq: number;
  from: string;
  type: string;
  /** What the sender passed, as JSON gave it back. */
  data: unknown;
  /** When the server stored it, in seconds since the epoch. */
  ts: number;
}

/** What a send resolves to: the envelope's seq in the recipient's mailbox. */
export interface SendResult {
  seq: number;
}

/** What a broadcast resolves to: who got it, and whose mailbox was full. */
export interface BroadcastResult {
  delivered_to: string[];
  mailbox_full: string[];
}

export interface PeerJoinedDetail {
  peerId: string;
  /** Its meta, or null without. */
  meta: Meta | null;
}

/** `left`, `timeout`, `removed` and `room_closed` come from the server; `rejoined` when this session had to join afresh. */
export type PeerLeftReason = "left" | "timeout" | "removed" | "room_closed" | "rejoined";

/** The application removed this peer or banned its id: final, the session is closed and never joins again. */
export interface RemovedDetail {
  code: FinalCode;
  /** The server's message, with the application's reason. */
  message: string;
}

/** The codes that end a session for good. */
export type FinalCode = "removed" | "banned";

/** Refusals that end a session for good (protocol 1.2). */
export declare const FINAL_CODES: ReadonlySet<FinalCode>;

export interface PeerLeftDetail {
  peerId: string;
  reason: PeerLeftReason;
}

export interface StateDetail {
  state: SessionState;
  /** With `reconnecting`: the ms it waits before trying again. */
  delay?: number;
}

export interface ErrorDetail {
  error: SignalingError;
  /** True when the session closed because of it. */
  fatal: boolean;
}

export interface ReceiveModeDetail {
  mode: ReceiveMode;
  reason: ReceiveModeReason;
}

/** The events of a session, each a CustomEvent whose `detail` is the payload. */
export interface SessionEventMap {
  message: CustomEvent<Envelope>;
  "peer-joined": CustomEvent<PeerJoinedDetail>;
  "peer-left": CustomEvent<PeerLeftDetail>;
  state: CustomEvent<StateDetail>;
  error: CustomEvent<ErrorDetail>;
  "receive-mode": CustomEvent<ReceiveModeDetail>;
  removed: CustomEvent<RemovedDetail>;
}

/** One member of one room, receiving from `join` on. Made by `join` only (no constructor is exported). */
export interface Session extends EventTarget {
  readonly baseUrl: string;
  readonly room: string;
  /** This member's id; keep it with `token` and `lastSeq` to resume after a reload. */
  readonly peerId: string;
  readonly token: string;
  /** The seq of the last envelope delivered. */
  readonly lastSeq: number;
  /** True when the join resumed a live member rather than making a new one. */
  readonly resumed: boolean;
  /** The other members, kept current before `peer-joined` and `peer-left` fire. */
  readonly peers: ReadonlySet<string>;
  /** The other members' meta by id (null for one without), kept with `peers`. */
  readonly members: ReadonlyMap<string, Meta | null>;
  /** This peer's own meta, as the server keeps it (null without). */
  readonly meta: Meta | null;
  /** The join's `ice_servers`, for `new RTCPeerConnection({ iceServers })`. */
  readonly iceServers: RTCIceServer[];
  readonly state: SessionState;
  /** null until the first stream opened or the first poll went out. */
  readonly receiveMode: ReceiveMode | null;

  /** Sends one envelope to peer `to`; sends to one peer arrive in call order. */
  send(to: string, type: string, data?: unknown): Promise<SendResult>;
  /** Sends one envelope to every other member. */
  broadcast(type: string, data?: unknown): Promise<BroadcastResult>;
  /** Leaves the room and stops receiving; safe to call twice. */
  leave(): Promise<void>;

  addEventListener<K extends keyof SessionEventMap>(
    type: K,
    listener: (this: Session, event: SessionEventMap[K]) => void,
    options?: boolean | AddEventListenerOptions,
  ): void;
  addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  removeEventListener<K extends keyof SessionEventMap>(
    type: K,
    listener: (this: Session, event: SessionEventMap[K]) => void,
    options?: boolean | EventListenerOptions,
  ): void;
  removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
}

/**
 * Joins `room` on the service at `baseUrl` and starts receiving; resolves once the server accepted the join.
 * Rejects with a SignalingError (`ticket_required`, `bad_ticket`, `peer_id_taken`, `room_full`, the network…),
 * or a TypeError for a `receive` that is none of the three.
 */
export declare function join(baseUrl: string | URL, room: string, options?: JoinOptions): Promise<Session>;
