/**
 * The client's public contract: its options, its states and errors, the browser objects it
 * drives, and the `RealtimeClient` interface. The behaviour lives in `client.ts`.
 */
import type { EventCatalog, KnownEventType, NotificationEvent, RealtimeEvent, RenderJobEvent } from './events.js';

/** How an event reached a listener: live, or as part of a snapshot of the latest state. */
export interface EventInfo {
  /**
   * True for an event of a snapshot: the latest state of its key (a render job) when the
   * page asked for it, after a `resync`, or when a watched job was mounted. It may repeat
   * an event delivered before; fold it like any other (the reducers are idempotent).
   */
  snapshot: boolean;
}

/** The latest state of every key a connection selects, oldest update first. */
export interface Snapshot {
  events: RealtimeEvent[];
  /** The gateway left out the oldest states: more than its send queue holds. */
  truncated: boolean;
}

import type { NumericOptions } from './options.js';

export type ConnectionState =
  | 'connecting'
  | 'open'
  | 'reconnecting'
  /** No usable token (getToken failed, or the gateway refused it): retrying with backoff and a fresh token. */
  | 'unauthorized'
  /** The gateway revoked this session (close 4003 / SSE close `revoked`). Final until `reconnect()`. */
  | 'revoked'
  /** `disconnect()` (or the provider's `enabled={false}`): listeners kept, nothing connects until `reconnect()`. */
  | 'disconnected'
  | 'closed';
export type TransportKind = 'websocket' | 'sse';
export type Unsubscribe = () => void;

/** Token, or null/undefined for cookie authentication. */
export type TokenResult = string | null | undefined;

export type RealtimeErrorCode =
  /** WS close 1008: an in-band refresh named another user/tenant. Not retried; see `reconnect()`. */
  | 'identity_mismatch'
  /** WS close 1009: this client sent an oversized message. Reconnects. */
  | 'message_too_big'
  /** `{"type":"error"}` from the gateway for a failed in-band refresh (`reason` is `refresh_<why>`). */
  | 'refresh_failed'
  /** Any other `{"type":"error"}` from the gateway. */
  | 'server_error'
  /** The gateway refused an in-band selection of event types (`invalid_types`): that connection receives everything instead. */
  | 'invalid_types'
  /** The gateway refused to watch more state keys (`invalid_keys`): every key is selected until `reconnect()`. */
  | 'invalid_keys'
  /** No token: getToken() threw, timed out or returned junk, or the token URL answered non-2xx (`status`). Retried with backoff. */
  | 'token_error'
  /** The gateway refused the token (401, `reason` says why). Retried with backoff and a fresh token. */
  | 'unauthorized'
  /** The gateway revoked the session. Not retried. */
  | 'revoked'
  /** The gateway refused for another cause: 403 origin, 429 too many connections, 503 over capacity or draining (`status`, `reason`, `retryAfterMs`). Retried, no sooner than Retry-After. */
  | 'refused'
  /** The WebSocket/EventSource constructor threw (bad URL, CSP), the gateway selected no or another subprotocol, or an SSE stream failed although the gateway would admit the token (CORS, a proxy). Retried like any failed attempt. */
  | 'connect_failed'
  /** A token would go over plain http/ws to a host other than this machine. Not retried. */
  | 'insecure_url'
  /** An attempt failed and `GET /auth/check` could not be reached either (network error, timeout, a proxy's 5xx): a wrong host, DNS, or the gateway down. `url` says what was tried. Retried. */
  | 'unreachable'
  /** An event of a catalog type whose `data` lacks the fields the type declares: not given to typed listeners. */
  | 'invalid_event'
  /** Neither WebSocket nor EventSource exists here (e.g. server-side rendering). Not retried. */
  | 'no_transport'
  /** React provider only: the options were rejected (missing or invalid `url`, bad numbers); nothing connects. */
  | 'invalid_options';

/**
 * `fatal`: the client stopped (revoked, identity_mismatch, insecure_url, no_transport,
 * invalid_options) until `reconnect()`. `retrying`: the client is trying again (or, signed
 * out, waiting for focus); cleared once a connection opens. `warning`: the connection is
 * live and stays so (a bad event, a refused refresh or selection); reported, never held.
 */
export type ErrorSeverity = 'fatal' | 'retrying' | 'warning';

export interface RealtimeError {
  code: RealtimeErrorCode;
  severity: ErrorSeverity;
  message: string;
  closeCode?: number;
  /** The URL an attempt failed on, never with a token (`unreachable`, `connect_failed`). */
  url?: string;
  /** HTTP status: of the token endpoint (`token_error`) or of the gateway's refusal. */
  status?: number;
  reason?: string;
  /** The gateway's `Retry-After`, for `refused`. */
  retryAfterMs?: number;
  cause?: unknown;
}

/** The part of the browser `WebSocket` this client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  /** The subprotocol the server selected ('' for none). */
  readonly protocol?: string;
  onopen: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The part of the browser `EventSource` this client uses. */
export interface EventSourceLike {
  readonly readyState: number;
  onopen: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  addEventListener(type: string, listener: (ev: MessageEvent) => void): void;
  close(): void;
}
export type EventSourceConstructor = new (url: string, init?: { withCredentials?: boolean }) => EventSourceLike;

/** Where the client hears `online` and `visibilitychange`; the browser's by default. */
export interface PageLifecycle {
  window?: Pick<EventTarget, 'addEventListener' | 'removeEventListener'>;
  document?: Pick<EventTarget, 'addEventListener' | 'removeEventListener'> & { readonly visibilityState?: string };
}

/** The WebSocket subprotocol of this protocol version; the token rides next to it as `bearer.<token>`. */
export const WS_PROTOCOL = 'realtime-gateway.v1';

export interface RealtimeClientOptions extends NumericOptions {
  /**
   * Absolute http(s) base of the gateway, e.g. `https://rt.flatrender.example` (a path
   * prefix is kept; ws(s) is derived), or a path starting with `/` on the page's origin.
   * Anything else throws at construction. May be left out with `tokenUrl` when the token
   * endpoint answers `{"token": ..., "url": ...}` (a page built statically learns the
   * gateway at run time); if neither gives one, the client stops with `invalid_options`.
   */
  url?: string;
  /**
   * Called before every connection attempt and before the token expires. Return the
   * current JWT, or null/undefined to authenticate with the gateway's cookie instead.
   * Throw (or reject) when there is none, e.g. signed out: the client reports
   * `token_error`, enters `unauthorized` and retries with backoff. A call that has not
   * settled after `connectTimeoutMs` counts as failed.
   */
  getToken?: () => TokenResult | Promise<TokenResult>;
  /**
   * Or a URL the client fetches the token from (same-origin cookies included): a text
   * body is the token, a JSON body `{"token": ...}`, which may also carry the gateway's
   * `url` and a `transport` (they win over the options). Serializable, so a server
   * component can configure the client. A non-2xx answer is a `token_error` with its
   * `status`.
   */
  tokenUrl?: string;
  /** Neither getToken nor tokenUrl: authenticate with the gateway's cookie. */
  cookieAuth?: boolean;
  /** `auto` (default): WebSocket, falling back to SSE when WebSocket is blocked on the path (see README), or if WebSocket doesn't exist. */
  transport?: 'auto' | TransportKind;
  /**
   * How the token reaches the WebSocket endpoint. `protocol` (default): in the
   * `Sec-WebSocket-Protocol` header, out of every URL and log; needs a gateway that
   * selects `realtime-gateway.v1`. `query`: `?access_token=` as older gateways expect.
   * SSE always uses the query (EventSource cannot set headers).
   */
  tokenTransport?: 'protocol' | 'query';
  /**
   * SSE over `fetch` (default true where response bodies stream, i.e. every current
   * browser): the token goes in an `Authorization: Bearer` header, never in the URL, and
   * a refusal's status and reason are read from the answer. `false` uses `EventSource`
   * (token in `?access_token=`, which shows in console errors and proxy logs).
   */
  sseFetch?: boolean;
  /**
   * Ask `GET <url>/auth/check` why an attempt failed (browsers hide refusal statuses).
   * Default true; a gateway without it (404) is handled as before.
   */
  probe?: boolean;
  /** Reconnect at once on `online`, and on becoming visible after `resumeAfterHiddenMs` hidden. Default true. */
  reconnectOnWake?: boolean;
  /**
   * Open the first connection at creation. Default true; false waits for `reconnect()`.
   * `RealtimeProvider` uses it so that its first connection carries the event types the
   * hooks mounted with it select (an SSE stream cannot change them without reconnecting).
   */
  autoConnect?: boolean;
  onResync?: () => void;
  onStateChange?: (state: ConnectionState) => void;
  onError?: (error: RealtimeError) => void;
  /**
   * Log what the client does and why (attempts, drops, liveness checks, state changes):
   * `true` for `console.debug`, or a function of your own. Never logs a token.
   */
  debug?: boolean | ((message: string, detail?: object) => void);
  /** Resume from this event id on the first connection (e.g. kept in sessionStorage). */
  lastEventId?: string | null;
  WebSocketImpl?: WebSocketConstructor;
  EventSourceImpl?: EventSourceConstructor;
  fetchImpl?: typeof fetch;
  lifecycle?: PageLifecycle;
  /** [0, 1) source for jitter; injectable for tests. */
  random?: () => number;
  /** Wall clock in ms; injectable for tests. */
  now?: () => number;
}

/** Everything the page may show about the connection, as one immutable snapshot. */
export interface ConnectionStatus {
  state: ConnectionState;
  /**
   * Why the client is in this state, in words for logs and tooltips (`closed 1001 (server
   * shutting down)`, `no answer to a liveness check`, an error code, `signed out: waiting
   * for focus...`); null when open. Not a stable contract: branch on `state` and `error`.
   */
  reason: string | null;
  /** When the next attempt is due (epoch ms), or null when none is planned. */
  retryAt: number | null;
  /** What keeps the client from being live (`fatal` or `retrying`); null once open. */
  error: RealtimeError | null;
  transport: TransportKind | null;
}

export interface RealtimeClient {
  readonly state: ConnectionState;
  /** State, reason, next retry and current error, as one snapshot (a new object on every change). */
  readonly status: ConnectionStatus;
  /** The current error (`status.error`): fatal or retrying, cleared when its cause is gone. */
  readonly error: RealtimeError | null;
  /** Transport of the current (or last) connection; null before the first attempt. */
  readonly transport: TransportKind | null;
  /** Last `event_id` delivered, across transports; sent as `last_event_id` on reconnect. */
  readonly lastEventId: string | null;
  /**
   * The event types the client asks the gateway for: the union of what its listeners and
   * `select()` calls need, or null for everything (nothing registered, or something needs
   * all). See "Selecting event types" in the README.
   */
  readonly selection: readonly string[] | null;
  /**
   * The state keys (render job ids) the client watches: the gateway then sends the state
   * of these jobs only. Null for every key: nothing watched, something needs every job
   * (a listener whose types match render job events without naming a job), or more keys
   * than `maxSelectedTypes`. See "Live state" in the README.
   */
  readonly keys: readonly string[] | null;
  /**
   * Every event, known catalog types or not (and so selects everything while registered).
   * With `types` (topic patterns: `*` one word, `#` zero or more), only events of those
   * types, and only those are selected. Check with `isCatalogEvent`/`isEventType` before
   * reading `data`. A bad pattern throws a `TypeError`.
   */
  onEvent(cb: (event: RealtimeEvent, info: EventInfo) => void, options?: { types?: string | readonly string[] }): Unsubscribe;
  /**
   * Events of one type, typed from `EventCatalog` (which apps can extend). Catalog types
   * are delivered only when `data` has the type's fields. Selects that type.
   */
  on<T extends KnownEventType>(type: T, cb: (event: EventCatalog[T], info: EventInfo) => void): Unsubscribe;
  /**
   * Valid `render.job.*` events whose `data.job_id` is `jobId`. Selects `render.job.#`
   * and watches `jobId`, with a snapshot: its current state comes first.
   */
  onJob(jobId: string, cb: (event: RenderJobEvent, info: EventInfo) => void): Unsubscribe;
  /** Valid `notification.*` events. Selects `notification.#`. */
  onNotification(cb: (event: NotificationEvent, info: EventInfo) => void): Unsubscribe;
  /**
   * Every snapshot, after its events reached the event listeners (marked `snapshot`):
   * for an app that keeps its own map of jobs and wants to know the state is complete.
   */
  onSnapshot(cb: (snapshot: Snapshot) => void): Unsubscribe;
  /**
   * Keeps these event types selected until the returned function is called, without a
   * listener (reference-counted: a type stays selected while anything still needs it).
   * A bad pattern throws a `TypeError`.
   */
  select(types: string | readonly string[]): Unsubscribe;
  /**
   * Watches these state keys (render job ids) until the returned function is called,
   * reference-counted; the gateway sends their current state first (a snapshot). A key
   * the gateway would refuse (other than 1 to 255 bytes of letters, digits, `_ - . : @`)
   * throws a `TypeError`.
   */
  watch(keys: string | readonly string[]): Unsubscribe;
  /** The gateway says events may have been lost: refetch state over REST. */
  onResync(cb: () => void): Unsubscribe;
  onStateChange(cb: (state: ConnectionState) => void): Unsubscribe;
  /** Every error, warnings included, with its severity. */
  onError(cb: (error: RealtimeError) => void): Unsubscribe;
  onStatusChange(cb: (status: ConnectionStatus) => void): Unsubscribe;
  /** Drop the current connection (if any) and connect again now with a fresh backoff, e.g. after `identity_mismatch`, `revoked` and a new sign-in. No-op after `close()`. */
  reconnect(): void;
  /**
   * Stop connecting, keeping listeners and selections (state `disconnected`), e.g. when
   * the user signs out; `reconnect()` starts again.
   */
  disconnect(): void;
  /** Stop for good: closes the connection, cancels every timer, drops all listeners. */
  close(): void;
}
