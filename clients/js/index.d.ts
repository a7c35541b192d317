// Type declarations for src/shardcast.js (hand-written; the module itself is plain
// JavaScript with no build step).

/** What a failure is about. */
export type ErrorKind =
  /** An error frame of the broker: notify event 0, chat `{"code","error"}`. */
  | "server"
  /** A close that ends the client (1000 or 1008 from the broker, 3000–4999 but 4000). */
  | "close"
  /** The token provider failed, or a refreshed token was refused as well (code 1004). */
  | "token"
  /** The WebSocket constructor threw. */
  | "network"
  /** An HTTP call answered with a non-zero code (`code` is it), or not with JSON. */
  | "http"
  /** `send` arguments the broker would refuse (code 2003); nothing was sent. */
  | "invalid"
  /** `send` while not connected; nothing was sent. */
  | "not_connected"
  /** The connection closed before the broker answered a send (`code` is the close code). */
  | "disconnected";

export class ShardcastError extends Error {
  constructor(kind: ErrorKind, code: number, message: string, options?: { cause?: unknown });
  readonly name: "ShardcastError";
  readonly kind: ErrorKind;
  /** A broker error code (docs/protocol.md §2–4), a close code, an HTTP status, or 0. */
  readonly code: number;
}

/**
 * - `idle`: created, `connect()` not called yet
 * - `connecting`: fetching a token or opening the socket
 * - `open`: the socket is open
 * - `waiting`: a reconnection is scheduled (backoff)
 * - `offline`: the browser is offline; reconnects when it is back
 * - `closed`: stopped by `close()`, by a close that is not retried, or by a refused token
 */
export type ConnectionState = "idle" | "connecting" | "open" | "waiting" | "offline" | "closed";

/** Called before each connection; `refresh` is true after the broker refused the token (1004). */
export type TokenProvider = (request: { refresh: boolean }) => string | Promise<string>;

/** The part of a WebSocket this client uses (browsers', Node's, the `ws` package's). */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}

export type WebSocketConstructor = new (url: string) => WebSocketLike;

export type FetchLike = (
  url: string,
  init: { headers: Record<string, string> },
) => Promise<{ status: number; json(): Promise<any> }>;

/** Where `online`/`offline` events come from: `window` in browsers. */
export interface NetworkTarget {
  addEventListener(type: "online" | "offline", listener: () => void): void;
  removeEventListener(type: "online" | "offline", listener: () => void): void;
  navigator?: { onLine: boolean };
}

export interface ReconnectOptions {
  /** Backoff base, ms (default 500): the n-th retry waits uniformly in [0, min(maxMs, baseMs·2ⁿ)). */
  baseMs?: number;
  /** Backoff cap, ms (default 30000). */
  maxMs?: number;
  /** A connection open this long resets the backoff, ms (default 10000). */
  stableMs?: number;
}

export interface ClientOptions {
  /** The broker, `http(s)://host:port` or `ws(s)://host:port`; default: the page's origin. */
  url?: string;
  getToken: TokenProvider;
  /** Default: the global WebSocket. */
  WebSocket?: WebSocketConstructor;
  /** Default: the global fetch (used by `ChatClient.history`). */
  fetch?: FetchLike;
  /** `false`: never reconnect (a refused token is still refreshed once). */
  reconnect?: ReconnectOptions | false;
  /** A socket not open after this long counts as lost, ms (default 10000). */
  connectTimeoutMs?: number;
  /** Default: `window` in browsers, none in Node; `null` to ignore the network state. */
  network?: NetworkTarget | null;
}

export interface CloseInfo {
  code: number;
  reason: string;
  willReconnect: boolean;
  /** The wait before the next attempt, ms; null when there is none. */
  delayMs: number | null;
}

interface BaseEvents {
  /** The socket opened (for notify, "unread" follows once the login is confirmed). */
  open: undefined;
  close: CloseInfo;
  state: ConnectionState;
  error: ShardcastError;
}

declare abstract class BaseClient<Events extends BaseEvents> {
  readonly state: ConnectionState;
  readonly connected: boolean;
  /** Starts connecting and keeps the connection up; after `close()`, starts afresh. */
  connect(): this;
  /** Closes with 1000, stops every retry and rejects pending sends; emits "close" at once. */
  close(): void;
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void;
  off<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): void;
  once<K extends keyof Events>(type: K, listener: (value: Events[K]) => void): () => void;
}

/** A notification (docs/protocol.md §3). */
export interface Notification {
  /** 24 lowercase hex characters. */
  _id: string;
  title: string;
  content: string;
  /** `YYYY-MM-DD HH:MM:SS` in the broker's configured offset. */
  create_time: string;
}

export interface NotifyEvents extends BaseEvents {
  /** Event 2, once per connection: the unread list, oldest first. */
  unread: Notification[];
  /** Event 1: a new notification. */
  message: Notification;
}

export type NotifyClientOptions = ClientOptions;

export class NotifyClient extends BaseClient<NotifyEvents> {
  constructor(options: NotifyClientOptions);
  /**
   * Event 3 for these ids (100 per frame; more are split). While not connected they are
   * kept and sent after the next login, and left out of its unread list.
   */
  markRead(ids: string | string[]): void;
}

/** 10 text, 20 image, 30 voice, 40 audio/video (100, system, arrives but cannot be sent). */
export type ChatType = 10 | 20 | 30 | 40;

/** A chat message (docs/protocol.md §4). */
export interface ChatMessage {
  id: string;
  fromId: string;
  fromName: string;
  fromResource: string;
  toId: string;
  domain: string;
  type: number;
  content: string;
  /** Unix milliseconds of the original send. */
  sendAt: number;
  /** True when it waited in the offline queue for this login. */
  offline: boolean;
}

export interface ChatAck {
  id: string;
  sendAt: number;
  /** True when no resource of the recipient was online: it was queued. */
  offline: boolean;
}

export interface HistoryQuery {
  /** Default: this user. Another user's id needs `fromId` = this user. */
  toId?: string;
  fromId?: string;
  /** Default 1. */
  page?: number;
  /** Default 10, at most 100. */
  size?: number;
}

export interface HistoryPage {
  page: number;
  size: number;
  total: number;
  /** Newest first. */
  list: Omit<ChatMessage, "offline">[];
}

export interface ChatEvents extends BaseEvents {
  message: ChatMessage;
  /** Closed with 4000: the same id and resource logged in elsewhere. Not reconnected. */
  replaced: { code: number; reason: string };
}

export interface ChatClientOptions extends ClientOptions {
  id: string;
  /** Default: `id`. */
  name?: string;
  /** Default "default". */
  domain?: string;
  /** The device, default "web". */
  resource?: string;
  /** Ask for acknowledgements (default true). */
  ack?: boolean;
  /** The broker's `max_message_bytes` (default 65536); longer content is refused locally. */
  maxMessageBytes?: number;
}

export class ChatClient extends BaseClient<ChatEvents> {
  constructor(options: ChatClientOptions);
  readonly id: string;
  readonly name: string;
  readonly domain: string;
  readonly resource: string;
  /**
   * With ack: resolves with the acknowledgement, rejects with the broker's error for this
   * send, or "disconnected" if the connection goes first. Without ack: null once written.
   */
  send(toId: string, type: ChatType, content: string): Promise<ChatAck | null>;
  /** GET /message-log with the token as Bearer (refreshed once on 1004). */
  history(query?: HistoryQuery): Promise<HistoryPage>;
}

// Only the declarations marked export above exist at runtime; this keeps the rest private.
export {};
