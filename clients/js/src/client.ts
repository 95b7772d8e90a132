/**
 * Connection manager for realtime-gateway: one logical stream of catalog events over
 * WebSocket (`/ws`) or Server-Sent Events (`/sse`), surviving reconnects.
 *
 * What it guarantees to listeners: each event at most once (dedupe by `event_id` over a
 * bounded window), in the order the gateway sent it, and a `resync` signal whenever the
 * gateway says events may have been lost. Everything else (backoff, resume, token
 * refresh, transport fallback) is hidden behind `state`.
 */
import {
  isNotificationEvent,
  isRenderJobEvent,
  type CatalogEventType,
  type EventOfType,
  type NotificationEvent,
  type RealtimeEvent,
  type RenderJobEvent,
} from './events.js';
import { decodeTokenTimes, MIN_REFRESH_DELAY_MS, refreshDelay, type TokenTimes } from './jwt.js';
import { RecentIds } from './recent.js';

export type ConnectionState = 'connecting' | 'open' | 'reconnecting' | 'closed';
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
  /** `getToken()` threw or rejected. The attempt counts as failed and is retried. */
  | 'token_error'
  /** The WebSocket/EventSource constructor threw (bad URL, CSP). Retried like any failed attempt. */
  | 'connect_failed'
  /** Neither WebSocket nor EventSource exists here (e.g. server-side rendering). Not retried. */
  | 'no_transport';

export interface RealtimeError {
  code: RealtimeErrorCode;
  message: string;
  closeCode?: number;
  reason?: string;
  cause?: unknown;
}

/** The part of the browser `WebSocket` this client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  onopen: ((ev: Event) => void) | null;
  onmessage: ((ev: MessageEvent) => void) | null;
  onclose: ((ev: CloseEvent) => void) | null;
  onerror: ((ev: Event) => void) | null;
  send(data: string): void;
  close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;

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

export interface RealtimeClientOptions {
  /** http(s) base of the gateway, e.g. `https://rt.flatrender.example` (a path prefix is kept). ws(s) is derived. */
  url: string;
  /**
   * Called before every connection attempt and before the token expires. Return the
   * current JWT, or null/undefined to authenticate with the gateway's cookie instead
   * (refresh the cookie here if needed).
   */
  getToken: () => TokenResult | Promise<TokenResult>;
  /** `auto` (default): WebSocket, falling back to SSE after `fallbackAfter` WebSocket attempts in a row fail to open, or if WebSocket doesn't exist. */
  transport?: 'auto' | TransportKind;
  /** Consecutive WebSocket attempts that never opened before `auto` switches to SSE for the rest of this client's life (or until `reconnect()`). Default 2. */
  fallbackAfter?: number;
  onResync?: () => void;
  onStateChange?: (state: ConnectionState) => void;
  onError?: (error: RealtimeError) => void;
  /** Reconnect delay = random(0, min(maxMs, initialMs * 2^attempt)) ("full jitter"). Defaults 1000 / 30000. */
  backoff?: { initialMs?: number; maxMs?: number };
  /** Refresh this long before `exp`, or at 80 % of the token's lifetime if that is sooner. Default 60000. */
  refreshBeforeExpiryMs?: number;
  /** WebSocket only: send `{"type":"ping"}` this often and drop the connection if nothing at all arrived since the previous ping. 0 (default) = off. */
  pingIntervalMs?: number;
  /** An attempt that neither opens nor fails within this time is abandoned and counted as failed. Default 15000. */
  connectTimeoutMs?: number;
  /** A connection open this long (or that delivered any message) resets the backoff. Default 5000. */
  healthyAfterMs?: number;
  /** How many recent event ids are remembered for deduplication. Default 1000. */
  dedupeWindow?: number;
  /** Resume from this event id on the first connection (e.g. kept in sessionStorage). */
  lastEventId?: string | null;
  WebSocketImpl?: WebSocketConstructor;
  EventSourceImpl?: EventSourceConstructor;
  /** [0, 1) source for jitter; injectable for tests. */
  random?: () => number;
  /** Wall clock in ms; injectable for tests. */
  now?: () => number;
}

export interface RealtimeClient {
  readonly state: ConnectionState;
  /** Transport of the current (or last) connection; null before the first attempt. */
  readonly transport: TransportKind | null;
  /** Last `event_id` delivered, across transports; sent as `last_event_id` on reconnect. */
  readonly lastEventId: string | null;
  /** Every event, known catalog types or not. */
  onEvent(cb: (event: RealtimeEvent) => void): Unsubscribe;
  /** Events of one catalog type, typed. */
  on<T extends CatalogEventType>(type: T, cb: (event: EventOfType<T>) => void): Unsubscribe;
  /** `render.job.*` events whose `data.job_id` is `jobId`. */
  onJob(jobId: string, cb: (event: RenderJobEvent) => void): Unsubscribe;
  /** `notification.*` events. */
  onNotification(cb: (event: NotificationEvent) => void): Unsubscribe;
  /** The gateway says events may have been lost: refetch state over REST. */
  onResync(cb: () => void): Unsubscribe;
  onStateChange(cb: (state: ConnectionState) => void): Unsubscribe;
  onError(cb: (error: RealtimeError) => void): Unsubscribe;
  /** Drop the current connection (if any) and connect again now with a fresh backoff, e.g. after `identity_mismatch` or when the browser comes back online. No-op after `close()`. */
  reconnect(): void;
  /** Stop for good: closes the connection, cancels every timer, drops all listeners. */
  close(): void;
}

export function createRealtimeClient(options: RealtimeClientOptions): RealtimeClient {
  return new Client(options);
}

// WebSocket close codes the gateway sends that need more than "reconnect".
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;

/** One connection attempt. Callbacks from a conn that is no longer `client.conn` are ignored. */
interface Conn {
  kind: TransportKind;
  opened: boolean;
  healthy: boolean;
  /** Anything received since the last ping we sent. */
  heard: boolean;
  send(data: string): void;
  /** Detach handlers and close; safe to call more than once. */
  close(): void;
}

type Timer = ReturnType<typeof setTimeout>;

class Client implements RealtimeClient {
  private readonly opts: RealtimeClientOptions;
  private readonly base: URL;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly ES: EventSourceConstructor | undefined;
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly seen: RecentIds;

  private readonly events = new Set<(e: RealtimeEvent) => void>();
  private readonly resyncs = new Set<() => void>();
  private readonly states = new Set<(s: ConnectionState) => void>();
  private readonly errors = new Set<(e: RealtimeError) => void>();

  private _state: ConnectionState = 'connecting';
  private _transport: TransportKind | null = null;
  private lastId: string | null;

  private conn: Conn | null = null;
  /** Bumped by every attempt, `reconnect()` and `close()`; async work from an older generation is dropped. */
  private gen = 0;
  private disposed = false; // close() was called
  private halted = false; // stopped by the gateway (1008) or no transport; reconnect() resumes
  private attempt = 0; // reconnects since the last healthy connection, drives backoff
  private wsFailures = 0; // WebSocket attempts in a row that never opened
  private wsEverOpened = false; // WebSocket works on this network: failures are outages
  private fellBack = false;

  private token: string | null = null;
  private pendingToken: string | null = null; // sent in a refresh, not yet confirmed
  private retryTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private healthyTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private pingTimer: ReturnType<typeof setInterval> | undefined;

  constructor(opts: RealtimeClientOptions) {
    this.opts = opts;
    const pageUrl = (globalThis as { location?: { href?: string } }).location?.href;
    this.base = new URL(opts.url, pageUrl);
    if (!/^(https?|wss?):$/.test(this.base.protocol)) {
      throw new TypeError(`realtime-client: url must be http(s) or ws(s), got ${opts.url}`);
    }
    this.WS = opts.WebSocketImpl ?? (typeof WebSocket === 'undefined' ? undefined : WebSocket);
    this.ES = opts.EventSourceImpl ?? (typeof EventSource === 'undefined' ? undefined : EventSource);
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? Date.now;
    this.seen = new RecentIds(opts.dedupeWindow ?? 1000);
    this.lastId = opts.lastEventId ?? null;
    if (opts.onResync) this.resyncs.add(opts.onResync);
    if (opts.onStateChange) this.states.add(opts.onStateChange);
    if (opts.onError) this.errors.add(opts.onError);
    void this.connect();
  }

  get state(): ConnectionState {
    return this._state;
  }
  get transport(): TransportKind | null {
    return this._transport;
  }
  get lastEventId(): string | null {
    return this.lastId;
  }

  // ---- subscriptions ----------------------------------------------------------------

  onEvent(cb: (event: RealtimeEvent) => void): Unsubscribe {
    return subscribe(this.events, cb);
  }

  on<T extends CatalogEventType>(type: T, cb: (event: EventOfType<T>) => void): Unsubscribe {
    return this.onEvent((e) => {
      if (e.event_type === type) cb(e as EventOfType<T>);
    });
  }

  onJob(jobId: string, cb: (event: RenderJobEvent) => void): Unsubscribe {
    return this.onEvent((e) => {
      if (isRenderJobEvent(e) && isRecord(e.data) && e.data.job_id === jobId) cb(e);
    });
  }

  onNotification(cb: (event: NotificationEvent) => void): Unsubscribe {
    return this.onEvent((e) => {
      if (isNotificationEvent(e)) cb(e);
    });
  }

  onResync(cb: () => void): Unsubscribe {
    return subscribe(this.resyncs, cb);
  }

  onStateChange(cb: (state: ConnectionState) => void): Unsubscribe {
    return subscribe(this.states, cb);
  }

  onError(cb: (error: RealtimeError) => void): Unsubscribe {
    return subscribe(this.errors, cb);
  }

  // ---- lifecycle -------------------------------------------------------------------

  reconnect(): void {
    if (this.disposed) return;
    this.stopAll();
    this.halted = false;
    this.attempt = 0;
    this.wsFailures = 0;
    this.fellBack = false;
    this.setState('connecting');
    void this.connect();
  }

  close(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.stopAll();
    this.setState('closed');
    this.events.clear();
    this.resyncs.clear();
    this.states.clear();
    this.errors.clear();
  }

  /** Cancels the connection, pending retry and any async attempt in flight. */
  private stopAll(): void {
    this.gen++;
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.dropConn();
  }

  private halt(): void {
    this.halted = true;
    this.stopAll();
    this.setState('closed');
  }

  /**
   * One attempt: ask for a token (unless the caller already did), pick the transport,
   * open it. `prefetched` is set when a refresh already called getToken().
   */
  private async connect(prefetched?: { token: string | null }): Promise<void> {
    const gen = ++this.gen;
    let token: string | null;
    if (prefetched) {
      token = prefetched.token;
    } else {
      try {
        token = (await this.opts.getToken()) ?? null;
      } catch (cause) {
        if (gen !== this.gen) return;
        this.emitError({ code: 'token_error', message: 'getToken() failed', cause });
        this.scheduleReconnect();
        return;
      }
      if (gen !== this.gen) return; // close()/reconnect() happened while we waited
    }

    const kind = this.pickTransport();
    if (!kind) {
      this.emitError({ code: 'no_transport', message: 'neither WebSocket nor EventSource is available' });
      this.halt();
      return;
    }
    this._transport = kind;
    this.token = token;
    try {
      this.conn = kind === 'websocket' ? this.openWebSocket(token) : this.openEventSource(token);
    } catch (cause) {
      // A constructor can throw (bad URL, CSP); treat it like any failed attempt.
      this.emitError({ code: 'connect_failed', message: `could not create ${kind} connection`, cause });
      if (kind === 'websocket') this.countWsFailure();
      this.scheduleReconnect();
      return;
    }
    const conn = this.conn;
    const timeout = this.opts.connectTimeoutMs ?? 15_000;
    this.connectTimer = setTimeout(() => {
      if (this.conn === conn && !conn.opened) this.handleDrop(conn);
    }, timeout);
  }

  private pickTransport(): TransportKind | null {
    const { WS, ES } = this;
    switch (this.opts.transport ?? 'auto') {
      case 'websocket':
        return WS ? 'websocket' : null;
      case 'sse':
        return ES ? 'sse' : null;
      default:
        if (WS && !(this.fellBack && ES)) return 'websocket';
        return ES ? 'sse' : null;
    }
  }

  private endpoint(kind: TransportKind, token: string | null): string {
    const u = new URL(this.base.href);
    const secure = u.protocol === 'https:' || u.protocol === 'wss:';
    u.protocol = kind === 'websocket' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
    u.pathname = u.pathname.replace(/\/+$/, '') + (kind === 'websocket' ? '/ws' : '/sse');
    u.hash = '';
    // URLSearchParams percent-encodes, so any token/id survives the query string.
    if (token !== null) u.searchParams.set('access_token', token);
    if (this.lastId !== null) u.searchParams.set('last_event_id', this.lastId);
    return u.href;
  }

  private openWebSocket(token: string | null): Conn {
    const ws = new this.WS!(this.endpoint('websocket', token));
    const conn: Conn = {
      kind: 'websocket',
      opened: false,
      healthy: false,
      heard: true,
      send: (data) => ws.send(data),
      close: () => {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(1000);
        } catch {
          // already closed
        }
      },
    };
    ws.onopen = () => {
      if (this.conn === conn) this.handleOpen(conn);
    };
    ws.onmessage = (ev) => {
      if (this.conn === conn && typeof ev.data === 'string') this.handleText(conn, ev.data);
    };
    // Browsers always follow `error` with `close`, which carries the code; act there only.
    ws.onerror = () => {};
    ws.onclose = (ev) => {
      if (this.conn === conn) this.handleDrop(conn, ev.code);
    };
    return conn;
  }

  private openEventSource(token: string | null): Conn {
    const url = this.endpoint('sse', token);
    // Cookie mode: a cross-origin EventSource only sends cookies with withCredentials.
    const es = token === null ? new this.ES!(url, { withCredentials: true }) : new this.ES!(url);
    const conn: Conn = {
      kind: 'sse',
      opened: false,
      healthy: false,
      heard: true,
      send: () => {},
      close: () => {
        es.onopen = es.onmessage = es.onerror = null;
        es.close();
      },
    };
    es.onopen = () => {
      if (this.conn === conn) this.handleOpen(conn);
    };
    const onText = (ev: MessageEvent) => {
      if (this.conn === conn && typeof ev.data === 'string') this.handleText(conn, ev.data);
    };
    es.onmessage = onText;
    // Named events carry control JSON (`{"type":"resync"}`, `{"type":"close",...}`).
    es.addEventListener('resync', onText);
    es.addEventListener('close', onText);
    // We close the EventSource on any error and reconnect ourselves instead of letting the
    // browser retry: its retry would reuse the old URL (stale token, stale last_event_id)
    // and skip getToken(). The gateway staggers shutdown closes, and our jitter spreads the
    // rest, so ignoring its `retry:` hint costs little.
    es.onerror = () => {
      if (this.conn === conn) this.handleDrop(conn);
    };
    return conn;
  }

  private handleOpen(conn: Conn): void {
    conn.opened = true;
    clearTimeout(this.connectTimer);
    if (conn.kind === 'websocket') {
      this.wsFailures = 0;
      this.wsEverOpened = true;
    }
    this.setState('open');
    this.healthyTimer = setTimeout(() => this.markHealthy(conn), this.opts.healthyAfterMs ?? 5_000);
    if (this.token !== null) this.scheduleRefresh(decodeTokenTimes(this.token));
    const every = this.opts.pingIntervalMs ?? 0;
    if (conn.kind === 'websocket' && every > 0) {
      this.pingTimer = setInterval(() => {
        if (this.conn !== conn) return;
        if (!conn.heard) {
          // Nothing (not even the pong) since the last ping: the socket is dead even if
          // the browser hasn't noticed yet.
          this.handleDrop(conn);
          return;
        }
        conn.heard = false;
        this.trySend(conn, { type: 'ping' });
      }, every);
    }
  }

  /** Backoff resets only once a connection proved useful, so accept-then-drop loops still back off. */
  private markHealthy(conn: Conn): void {
    if (conn.healthy || this.conn !== conn) return;
    conn.healthy = true;
    this.attempt = 0;
    clearTimeout(this.healthyTimer);
  }

  private handleText(conn: Conn, text: string): void {
    conn.heard = true;
    this.markHealthy(conn);
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // not ours to crash on
    }
    if (!isRecord(msg)) return;
    if ('event_id' in msg) {
      if (typeof msg.event_id === 'string' && msg.event_id !== '' && typeof msg.event_type === 'string') {
        this.deliver(msg as unknown as RealtimeEvent);
      }
      return;
    }
    switch (msg.type) {
      case 'resync':
        for (const cb of [...this.resyncs]) safeCall(cb, undefined);
        break;
      case 'refreshed':
        if (typeof msg.exp === 'number') this.handleRefreshed(msg.exp);
        break;
      case 'error': {
        const reason = typeof msg.reason === 'string' ? msg.reason : 'unknown';
        const refresh = reason.startsWith('refresh_');
        // A failed refresh leaves the connection alive until the old exp; the gateway then
        // closes with 4001 and the reconnect fetches a new token. Nothing to retry here.
        if (refresh) this.pendingToken = null;
        this.emitError({
          code: refresh ? 'refresh_failed' : 'server_error',
          message: `gateway error: ${reason}`,
          reason,
        });
        break;
      }
      case 'close': // SSE: the gateway is about to end the stream (shutdown or token_expired)
        this.handleDrop(conn);
        break;
      default: // pong and anything newer: liveness was already noted
        break;
    }
  }

  private deliver(event: RealtimeEvent): void {
    if (!this.seen.add(event.event_id)) return; // replay seam or redelivery
    this.lastId = event.event_id;
    for (const cb of [...this.events]) {
      if (this.disposed) return; // a listener called close()
      safeCall(cb, event);
    }
  }

  /** The connection ended or failed: decide between retrying, falling back and stopping. */
  private handleDrop(conn: Conn, closeCode?: number): void {
    this.dropConn();
    if (!conn.opened && conn.kind === 'websocket') this.countWsFailure();
    if (closeCode === CLOSE_POLICY) {
      // The app handed us a token for someone else: retrying can't fix that, and quick
      // retries would only hammer the gateway. The app decides (new client or reconnect()).
      this.emitError({
        code: 'identity_mismatch',
        message: 'gateway closed the connection: refresh token for another identity',
        closeCode,
      });
      this.halt();
      return;
    }
    if (closeCode === CLOSE_TOO_BIG) {
      this.emitError({ code: 'message_too_big', message: 'gateway closed the connection: message too big', closeCode });
    }
    // 1001 shutdown, 4000 slow client, 4001 token expired, 4002 idle, network loss:
    // all reconnect with backoff; getToken() runs before the attempt and last_event_id resumes.
    this.scheduleReconnect();
  }

  private countWsFailure(): void {
    this.wsFailures++;
    // Only a WebSocket that never worked (a proxy that blocks upgrades) means "use SSE";
    // once it has opened, failures are outages (a deploy, Wi-Fi) and WebSocket comes back.
    if (this.wsEverOpened) return;
    if ((this.opts.transport ?? 'auto') === 'auto' && this.wsFailures >= (this.opts.fallbackAfter ?? 2)) {
      this.fellBack = true;
    }
  }

  private scheduleReconnect(): void {
    if (this.disposed || this.halted) return;
    this.setState('reconnecting');
    const initial = this.opts.backoff?.initialMs ?? 1_000;
    const max = this.opts.backoff?.maxMs ?? 30_000;
    const ceiling = Math.min(max, initial * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      void this.connect();
    }, this.random() * ceiling);
  }

  /** Per-connection timers and the connection itself; leaves the retry timer alone. */
  private dropConn(): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.healthyTimer);
    clearTimeout(this.refreshTimer);
    clearInterval(this.pingTimer);
    this.connectTimer = this.healthyTimer = this.refreshTimer = this.pingTimer = undefined;
    this.pendingToken = null;
    const conn = this.conn;
    this.conn = null;
    conn?.close();
  }

  // ---- token refresh --------------------------------------------------------------

  private scheduleRefresh(times: TokenTimes): void {
    clearTimeout(this.refreshTimer);
    const delay = refreshDelay(times, this.now(), this.opts.refreshBeforeExpiryMs ?? 60_000);
    if (delay === null) return; // no exp: nothing to plan; the gateway will tell us (4001 / close)
    this.refreshTimer = setTimeout(() => void this.refresh(times), delay);
  }

  private async refresh(times: TokenTimes): Promise<void> {
    const conn = this.conn;
    if (!conn?.opened) return;
    const gen = this.gen;
    let token: string | null;
    try {
      token = (await this.opts.getToken()) ?? null;
    } catch (cause) {
      if (gen === this.gen) this.emitError({ code: 'token_error', message: 'getToken() failed during refresh', cause });
      return; // the gateway closes at exp and the reconnect asks again
    }
    if (gen !== this.gen || this.conn !== conn) return;

    if (token === this.token) {
      // The app has nothing fresher yet: ask again a little later while the token lives.
      if (times.exp !== undefined && this.now() + MIN_REFRESH_DELAY_MS < times.exp * 1000) {
        this.refreshTimer = setTimeout(() => void this.refresh(times), MIN_REFRESH_DELAY_MS);
      }
      return;
    }
    if (conn.kind === 'websocket' && token !== null) {
      this.pendingToken = token;
      this.trySend(conn, { type: 'refresh', token });
      return;
    }
    // SSE has no in-band channel (and a WebSocket can't switch to cookie auth in band):
    // reconnect right now with the new credentials, resuming from lastEventId.
    this.dropConn();
    this.setState('reconnecting');
    void this.connect({ token });
  }

  private handleRefreshed(exp: number): void {
    const token = this.pendingToken;
    if (token === null) return;
    this.pendingToken = null;
    this.token = token;
    this.scheduleRefresh({ ...decodeTokenTimes(token), exp });
  }

  // ---- plumbing ---------------------------------------------------------------------

  private trySend(conn: Conn, msg: object): void {
    try {
      conn.send(JSON.stringify(msg));
    } catch {
      // Socket is closing; its close event drives the reconnect.
    }
  }

  private setState(state: ConnectionState): void {
    if (this._state === state) return;
    this._state = state;
    for (const cb of [...this.states]) safeCall(cb, state);
  }

  private emitError(error: RealtimeError): void {
    for (const cb of [...this.errors]) safeCall(cb, error);
  }
}

function subscribe<T>(set: Set<T>, cb: T): Unsubscribe {
  set.add(cb);
  return () => {
    set.delete(cb);
  };
}

/** A throwing listener must not break delivery to the others or the connection. */
function safeCall<A>(cb: (arg: A) => void, arg: A): void {
  try {
    cb(arg);
  } catch (err) {
    if (typeof reportError === 'function') reportError(err);
    else console.error(err);
  }
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
