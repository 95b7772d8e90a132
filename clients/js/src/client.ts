/**
 * Connection manager for realtime-gateway: one logical stream of catalog events over
 * WebSocket (`/ws`) or Server-Sent Events (`/sse`), surviving reconnects.
 *
 * What it guarantees to listeners: each event at most once (dedupe by `event_id` over a
 * bounded window), in the order the gateway sent it, and a `resync` signal whenever the
 * gateway says events may have been lost. Everything else (backoff, resume, token
 * refresh, refusal probes, transport fallback, liveness) is hidden behind `state`, and
 * every failure the app could act on is reported through `onError`.
 */
import {
  WS_PROTOCOL,
  type ConnectionState,
  type ConnectionStatus,
  type ErrorSeverity,
  type EventInfo,
  type EventSourceConstructor,
  type RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeError,
  type RealtimeErrorCode,
  type Snapshot,
  type TransportKind,
  type Unsubscribe,
  type WebSocketConstructor,
} from './api.js';
import {
  isCatalogEvent,
  isNotificationEvent,
  isRenderJobEvent,
  KNOWN_EVENT_TYPES,
  type EventCatalog,
  type KnownEventType,
  type NotificationEvent,
  type RealtimeEvent,
  type RenderJobEvent,
} from './events.js';
import {
  checkKey,
  checkPatterns,
  Interests,
  Keys,
  needsEveryKey,
  sameSelection,
  selectionCovers,
  topicMatches,
} from './interest.js';
import { decodeTokenTimes, MAX_TIMER_MS, MIN_REFRESH_DELAY_MS, refreshDelay, type TokenTimes } from './jwt.js';
import { isLoopback, isSecure, resolveBaseUrl, resolveSettings, type Settings } from './options.js';
import { probeAuth, probeStream, type ProbeResult } from './probe.js';
import { canStreamFetch, FetchEventSource } from './sse.js';
import { RecentIds } from './recent.js';
import { checkToken, fetchTokenAnswer, TokenError, withDeadline, type TokenAnswer } from './token.js';
import { watchPage } from './wake.js';

export function createRealtimeClient(options: RealtimeClientOptions): RealtimeClient {
  return new Client(options);
}

/** A resume position the gateway hands a quiet connection. */
const POSITION = /^p:[0-9a-f]{16}$/;

// WebSocket close codes the gateway sends that need more than "reconnect".
const CLOSE_POLICY = 1008;
const CLOSE_TOO_BIG = 1009;
const CLOSE_TOKEN_EXPIRED = 4001;
/** The least time between two attempts when a wake (online, focus, the tab shown) brings one forward. */
const WAKE_MIN_GAP_MS = 2_000;
const CLOSE_REVOKED = 4003;

/** One connection attempt. Callbacks from a conn that is neither `client.conn` nor the trial are ignored. */
interface Conn {
  kind: TransportKind;
  /** The URL tried, without any token: what an error about this attempt names. */
  url: string;
  /** Why it failed, when the transport could see it (an SSE stream over fetch reads the refusal). */
  failure?: ProbeResult | undefined;
  opened: boolean;
  healthy: boolean;
  /** Anything received since the last ping we sent. */
  heard: boolean;
  lastHeardAt: number;
  /** Messages received so far: a liveness check compares it before and after its ping. */
  heardCount: number;
  /**
   * The event types the gateway holds for this connection as far as we know (null: its
   * default, everything): the `types=` it was opened with, then what we asked in band,
   * then what it answered.
   */
  selection: string[] | null;
  /** The state keys the gateway holds for this connection as far as we know (null: every key), kept like `selection`. */
  keys: string[] | null;
  /** In-band selection messages not answered yet. */
  pendingSelections: number;
  /** The gateway refused or does not know in-band selection: this connection stays as it is. */
  selectionFrozen: boolean;
  send(data: string): void;
  /** Detach handlers and close; safe to call more than once. */
  close(): void;
}

type Timer = ReturnType<typeof setTimeout>;

/** An in-band change of a WebSocket's selection; the gateway answers each with `subscribed` (or an error). */
type SelectionMessage =
  | { type: 'subscribe' | 'unsubscribe'; types: readonly string[]; snapshot?: boolean }
  | { type: 'watch' | 'unwatch'; keys: readonly string[]; snapshot?: boolean };

class Client implements RealtimeClient {
  // Private (#) so neither the token nor getToken shows in React DevTools or a console
  // dump of the client.
  readonly #opts: RealtimeClientOptions;
  readonly #getToken: () => Promise<string | null>;
  #token: string | null = null;
  /** Sent in a refresh, not yet confirmed. */
  #pendingToken: string | null = null;
  /** The token of `successor`, which becomes `#token` when it takes over. */
  #successorToken: string | null = null;

  /** The gateway's base URL: from the options, or from the token endpoint's answer (`{"token", "url"}`). */
  private base: URL | null;
  /** `transport` from the token endpoint's answer, when it gave one; wins over the option. */
  private answeredTransport: 'auto' | TransportKind | undefined;
  private readonly pageUrl: string | undefined;
  private readonly cfg: Settings;
  private readonly WS: WebSocketConstructor | undefined;
  private readonly ES: EventSourceConstructor | undefined;
  private readonly fetchImpl: typeof fetch | undefined;
  private readonly random: () => number;
  private readonly now: () => number;
  private readonly seen: RecentIds;
  /** Stops listening to the page; set while the client runs (so a client made during a render and dropped holds nothing). */
  private detachLifecycle: (() => void) | null = null;

  private readonly events = new Set<(e: RealtimeEvent, info: EventInfo) => void>();
  private readonly resyncs = new Set<() => void>();
  private readonly snapshots = new Set<(s: Snapshot) => void>();
  private readonly states = new Set<(s: ConnectionState) => void>();
  private readonly errors = new Set<(e: RealtimeError) => void>();
  /** What listeners, hooks and `select()` need; its union is what the gateway is asked for. */
  private readonly interests: Interests;
  /** The state keys (job ids) listeners and `watch()` need; the gateway sends only their state. */
  private readonly watched: Keys;
  /** The gateway refused a `watch` (`invalid_keys`): every key is selected until reconnect(). */
  private releaseKeyRefusal: (() => void) | null = null;

  private _state: ConnectionState = 'connecting';
  /** What keeps the client from being live (fatal or retrying); warnings never stay here. */
  private _error: RealtimeError | null = null;
  /** Why the client is in its state, in words (for logs and tooltips). */
  private why: string | null = null;
  private retryAt: number | null = null;
  private _status: ConnectionStatus = { state: 'connecting', reason: null, retryAt: null, error: null, transport: null };
  private readonly statuses = new Set<(s: ConnectionStatus) => void>();
  private _transport: TransportKind | null = null;
  private lastId: string | null;

  private conn: Conn | null = null;
  /**
   * A connection opened beside the serving one, which it replaces once it opens
   * (make-before-break): a WebSocket tried again while SSE serves, or an SSE stream with a
   * fresh token or a wider selection.
   */
  private trial: Conn | null = null;
  /** Bumped by every attempt, `reconnect()` and `close()`; async work from an older generation is dropped. */
  private gen = 0;
  private disposed = false; // close() was called
  private halted = false; // stopped by the gateway or a config error; reconnect() resumes
  /** Not started yet (`autoConnect: false`) or `disconnect()`ed: nothing connects until `reconnect()`. */
  private stopped: boolean;
  /** Attempts in a row refused as signed out (a 401/403 token endpoint, a gateway 401). */
  private signedOutAttempts = 0;
  private lastAttemptAt = -Infinity;
  private readonly onServer: boolean;
  /** The gateway refused our selection as too large (400 `types`): connect for everything until reconnect(). */
  private selectAll = false;
  private attempt = 0; // reconnects since the last healthy connection, drives backoff
  private wsFailures = 0; // WebSocket attempts in a row that failed and could not be explained
  private wsBlocked = 0; // WebSocket attempts in a row that failed while the gateway would admit us
  private wsEverOpened = false; // WebSocket works on this network: unexplained failures are outages
  private fellBack = false;
  private lastRefreshAt: number | undefined;
  private sameTokenRetries = 0;

  private retryTimer: Timer | undefined;
  private connectTimer: Timer | undefined;
  private healthyTimer: Timer | undefined;
  private refreshTimer: Timer | undefined;
  private livenessTimer: ReturnType<typeof setInterval> | undefined;
  private checkTimer: Timer | undefined;
  private wsRetryTimer: Timer | undefined;
  private trialTimer: Timer | undefined;
  private selectionTimer: Timer | undefined;

  constructor(opts: RealtimeClientOptions) {
    this.#opts = opts;
    const pageUrl = (globalThis as { location?: { href?: string } }).location?.href;
    this.pageUrl = pageUrl;
    // With a token URL the endpoint may say where the gateway is, so a statically built
    // page needs no URL of its own (README "React / Next.js"); otherwise it is required.
    this.base = opts.url === undefined && opts.tokenUrl !== undefined ? null : resolveBaseUrl(opts.url, pageUrl);
    this.cfg = resolveSettings(opts);
    this.fetchImpl = opts.fetchImpl ?? (typeof fetch === 'undefined' ? undefined : fetch.bind(globalThis));
    this.#getToken = tokenSource(opts, this.fetchImpl, (answer) => this.configure(answer));
    this.WS = opts.WebSocketImpl ?? (typeof WebSocket === 'undefined' ? undefined : WebSocket);
    this.ES = opts.EventSourceImpl ?? (typeof EventSource === 'undefined' ? undefined : EventSource);
    this.random = opts.random ?? Math.random;
    this.now = opts.now ?? Date.now;
    this.seen = new RecentIds(this.cfg.dedupeWindow);
    this.interests = new Interests(this.cfg.maxSelectedTypes);
    this.watched = new Keys(this.cfg.maxSelectedTypes);
    this.lastId = opts.lastEventId ?? null;
    // Server rendering (no `window`): Node 22 has WebSocket and every Node has fetch, so a
    // client created at module scope would connect from the server. It never does there
    // unless transports were injected on purpose (tests, Node tools).
    this.onServer =
      typeof window === 'undefined' && !opts.WebSocketImpl && !opts.EventSourceImpl && !opts.fetchImpl;
    this.stopped = opts.autoConnect === false || this.onServer;
    if (opts.onResync) this.resyncs.add(opts.onResync);
    if (opts.onStateChange) this.states.add(opts.onStateChange);
    if (opts.onError) this.errors.add(opts.onError);
    if (!this.stopped) this.start();
  }

  /** Listens to the page and connects. The constructor does neither when not started, so creating a client has no side effects. */
  private start(): void {
    if (this.detachLifecycle === null && this.#opts.reconnectOnWake !== false) {
      this.detachLifecycle = watchPage(this.#opts.lifecycle, {
        now: this.now,
        resumeAfterHiddenMs: this.cfg.resumeAfterHiddenMs,
        waiting: () => this._state === 'reconnecting' || this._state === 'unauthorized',
        wake: () => this.wake(),
        check: () => {
          if (this.conn?.opened) this.checkLiveness(this.conn);
        },
      });
    }
    void this.connect();
  }

  private detach(): void {
    this.detachLifecycle?.();
    this.detachLifecycle = null;
  }

  get state(): ConnectionState {
    return this._state;
  }
  get status(): ConnectionStatus {
    return this._status;
  }
  get error(): RealtimeError | null {
    return this._error;
  }
  get transport(): TransportKind | null {
    return this._transport;
  }
  get lastEventId(): string | null {
    return this.lastId;
  }
  get selection(): readonly string[] | null {
    return this.interests.selection;
  }
  get keys(): readonly string[] | null {
    return this.watched.selection;
  }

  // ---- subscriptions ----------------------------------------------------------------

  onEvent(
    cb: (event: RealtimeEvent, info: EventInfo) => void,
    options: { types?: string | readonly string[] } = {},
  ): Unsubscribe {
    if (options.types === undefined) return this.listen(['#'], cb);
    const patterns = checkPatterns(options.types);
    return this.listen(patterns, (e, info) => {
      if (patterns.some((p) => topicMatches(p, e.event_type))) cb(e, info);
    });
  }

  on<T extends KnownEventType>(type: T, cb: (event: EventCatalog[T], info: EventInfo) => void): Unsubscribe {
    const checked = KNOWN_EVENT_TYPES.has(type); // an app's own types have no shape to check
    return this.listen(checkPatterns(type), (e, info) => {
      if (e.event_type === type && (!checked || isCatalogEvent(e))) cb(e as EventCatalog[T], info);
    });
  }

  onJob(jobId: string, cb: (event: RenderJobEvent, info: EventInfo) => void): Unsubscribe {
    // An id the gateway would refuse as a key cannot be watched: such a job needs every key.
    let keys: string[] | null = null;
    try {
      keys = [checkKey(jobId)];
    } catch {
      // keys stays null
    }
    return this.listen(
      ['render.job.#'],
      (e, info) => {
        if (isRenderJobEvent(e) && e.data.job_id === jobId) cb(e, info);
      },
      keys,
    );
  }

  onNotification(cb: (event: NotificationEvent, info: EventInfo) => void): Unsubscribe {
    return this.listen(['notification.#'], (e, info) => {
      if (isNotificationEvent(e)) cb(e, info);
    });
  }

  onSnapshot(cb: (snapshot: Snapshot) => void): Unsubscribe {
    return subscribe(this.snapshots, cb);
  }

  select(types: string | readonly string[]): Unsubscribe {
    const patterns = checkPatterns(types);
    return this.register(patterns, needsEveryKey(patterns) ? null : []);
  }

  watch(keys: string | readonly string[]): Unsubscribe {
    return this.register([], (typeof keys === 'string' ? [keys] : [...keys]).map(checkKey));
  }

  /** Keeps `patterns` selected and `keys` watched (null: every key) until the returned function is called. */
  private register(patterns: readonly string[], keys: readonly string[] | null): Unsubscribe {
    const releaseTypes = this.interests.add(patterns);
    const releaseKeys = this.watched.add(keys);
    this.selectionChanged();
    return () => {
      releaseTypes();
      releaseKeys();
      this.selectionChanged();
    };
  }

  /**
   * A listener that keeps `patterns` selected while it is registered, and `keys` watched
   * (by default none, or every key when the patterns can match a render job's state).
   */
  private listen(
    patterns: readonly string[],
    cb: (event: RealtimeEvent, info: EventInfo) => void,
    keys: readonly string[] | null = needsEveryKey(patterns) ? null : [],
  ): Unsubscribe {
    const release = this.register(patterns, keys);
    const off = subscribe(this.events, cb);
    return () => {
      off();
      release();
    };
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

  onStatusChange(cb: (status: ConnectionStatus) => void): Unsubscribe {
    return subscribe(this.statuses, cb);
  }

  // ---- lifecycle -------------------------------------------------------------------

  reconnect(): void {
    if (this.disposed || this.onServer) return;
    this.stopAll();
    this.halted = false;
    this.stopped = false;
    this.signedOutAttempts = 0;
    this.selectAll = false;
    this.releaseKeyRefusal?.();
    this.releaseKeyRefusal = null;
    this.attempt = 0;
    this.wsFailures = 0;
    this.wsBlocked = 0;
    this.fellBack = false;
    this.#token = null; // after a new sign-in, say: ask the token source again
    this.setState('connecting');
    this.start();
  }

  disconnect(): void {
    if (this.disposed) return;
    this.stopAll();
    this.detach();
    this.stopped = true;
    this.why = 'disconnect()';
    this.setState('disconnected');
  }

  close(): void {
    if (this.disposed) return;
    this.disposed = true;
    clearTimeout(this.selectionTimer);
    this.stopAll();
    this.detach();
    this.setState('closed');
    this.events.clear();
    this.resyncs.clear();
    this.snapshots.clear();
    this.states.clear();
    this.errors.clear();
  }

  /** Cancels the connection, the trial, pending retries and any async attempt in flight. */
  private stopAll(): void {
    this.gen++;
    clearTimeout(this.retryTimer);
    clearTimeout(this.wsRetryTimer);
    this.retryTimer = this.wsRetryTimer = undefined;
    this.dropTrial();
    this.dropConn();
  }

  private halt(state: 'closed' | 'revoked' = 'closed'): void {
    this.halted = true;
    this.stopAll();
    this.setState(state);
  }

  /** Online again, or back from a long sleep: whatever we hold may be dead; connect now and resume. */
  /**
   * Online again, the tab shown or focused while waiting out a backoff (or signed out):
   * try now rather than at the end of a long wait, but never sooner than
   * `WAKE_MIN_GAP_MS` after the previous attempt, and without resetting the backoff, so
   * switching tabs back and forth cannot turn into a burst of attempts.
   */
  private wake(): void {
    if (this.disposed || this.halted || this.stopped) return;
    const waiting = this.retryTimer !== undefined || this.signedOutAttempts > this.cfg.signedOutRetries;
    if (!waiting) return; // an attempt is in flight, or a connection serves (liveness checks it)
    const at = Math.max(this.now(), this.lastAttemptAt + WAKE_MIN_GAP_MS);
    if (this.retryAt !== null && this.retryAt <= at) return; // already due sooner
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.setState('reconnecting');
    if (at <= this.now()) {
      void this.connect();
      return;
    }
    this.retryAt = at;
    this.publish();
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retryAt = null;
      void this.connect();
    }, at - this.now());
  }

  /** One attempt: get a token, pick the transport, open it. */
  private async connect(): Promise<void> {
    const gen = ++this.gen;
    this.lastAttemptAt = this.now();
    let token = this.reusableToken();
    if (token === null) {
      try {
        token = checkToken(
          await withDeadline(this.#getToken(), this.cfg.connectTimeoutMs, 'getToken()'),
          this.tokenInProtocol(),
        );
      } catch (cause) {
        if (gen !== this.gen) return;
        this.tokenFailed(cause);
        return;
      }
      if (gen !== this.gen) return; // close()/reconnect() happened while we waited
    }
    if (this.base === null) {
      this.emitError({
        code: 'invalid_options',
        message:
          'realtime-client: `url` is required: give it in the options or have the token endpoint answer {"token": ..., "url": "https://..."}',
      });
      this.halt();
      return;
    }
    if (token !== null && !isSecure(this.base) && !isLoopback(this.base)) {
      this.emitError({
        code: 'insecure_url',
        message: `refusing to send a token over ${this.base.protocol}// to ${this.base.hostname}: use https`,
      });
      this.halt();
      return;
    }

    const kind = this.pickTransport();
    if (!kind) {
      this.emitError({ code: 'no_transport', message: 'neither WebSocket nor EventSource is available' });
      this.halt();
      return;
    }
    this._transport = kind;
    this.publish();
    this.#token = token;
    let conn: Conn;
    try {
      conn = kind === 'websocket' ? this.openWebSocket(token) : this.openEventSource(token);
    } catch (cause) {
      // A constructor can throw (bad URL, CSP); treat it like any failed attempt.
      this.emitError({ code: 'connect_failed', message: `could not create ${kind} connection`, cause });
      if (kind === 'websocket') this.countWsFailure();
      this.scheduleReconnect();
      return;
    }
    this.conn = conn;
    this.connectTimer = setTimeout(() => {
      if (this.conn === conn && !conn.opened) this.handleDrop(conn);
    }, this.cfg.connectTimeoutMs);
  }

  /**
   * The token of the last attempt, while it is still far from its refresh time: a
   * reconnect after a drop (a deploy, a network change) need not ask the token source
   * again. Null for cookie auth, for a token without `exp`, and once the gateway refused
   * or expired it (those paths clear `#token`).
   */
  private reusableToken(): string | null {
    const token = this.#token;
    if (token === null) return null;
    const due = refreshDelay(decodeTokenTimes(token), this.now(), this.cfg.refreshBeforeExpiryMs);
    if (due === null || due <= MIN_REFRESH_DELAY_MS) return null;
    try {
      return checkToken(token, this.tokenInProtocol());
    } catch {
      return null; // fetched for another transport (a `/` does not fit Sec-WebSocket-Protocol)
    }
  }

  /** What the token endpoint said besides the token: where the gateway is, which transport. */
  private configure(answer: TokenAnswer): void {
    if (answer.url !== undefined) this.base = resolveBaseUrl(answer.url, this.pageUrl); // throws: a token_error
    if (answer.transport === 'auto' || answer.transport === 'websocket' || answer.transport === 'sse') {
      this.answeredTransport = answer.transport;
    }
  }

  private tokenFailed(cause: unknown): void {
    const status = errorStatus(cause);
    this.emitError({
      code: 'token_error',
      message: cause instanceof Error ? cause.message : 'getToken() failed',
      ...(status !== undefined ? { status } : {}),
      cause,
    });
    this.scheduleReconnect({ state: 'unauthorized', signedOut: status === 401 || status === 403 });
  }

  private tokenInProtocol(): boolean {
    return (this.#opts.tokenTransport ?? 'protocol') === 'protocol' && this.pickTransport() === 'websocket';
  }

  /** SSE over fetch (token in a header, refusals readable) unless turned off or unsupported. */
  private sseOverFetch(): boolean {
    return this.#opts.sseFetch !== false && canStreamFetch(this.fetchImpl);
  }

  private pickTransport(): TransportKind | null {
    const WS = this.WS;
    const ES = this.ES !== undefined || this.sseOverFetch();
    switch (this.answeredTransport ?? this.#opts.transport ?? 'auto') {
      case 'websocket':
        return WS ? 'websocket' : null;
      case 'sse':
        return ES ? 'sse' : null;
      default:
        if (WS && !(this.fellBack && ES)) return 'websocket';
        return ES ? 'sse' : null;
    }
  }

  /** The URL of a stream; `snapshot` asks for the state of what it selects first. */
  private endpoint(
    kind: TransportKind,
    queryToken: string | null,
    selection: readonly string[] | null,
    resume = true,
    keys: readonly string[] | null = null,
    snapshot = false,
  ): string {
    const u = new URL(this.base!.href);
    const secure = isSecure(u);
    u.protocol = kind === 'websocket' ? (secure ? 'wss:' : 'ws:') : secure ? 'https:' : 'http:';
    u.pathname = u.pathname.replace(/\/+$/, '') + (kind === 'websocket' ? '/ws' : '/sse');
    // URLSearchParams percent-encodes, so any token/id survives the query string.
    if (queryToken !== null) u.searchParams.set('access_token', queryToken);
    if (resume && this.lastId !== null) u.searchParams.set('last_event_id', this.lastId);
    if (selection !== null && !this.selectAll) u.searchParams.set('types', selection.join(','));
    if (keys !== null) u.searchParams.set('keys', keys.join(','));
    if (snapshot) u.searchParams.set('snapshot', '1');
    return u.href;
  }

  private newConn(
    kind: TransportKind,
    url: string,
    selection: string[] | null,
    keys: string[] | null,
    send: Conn['send'],
    close: Conn['close'],
  ): Conn {
    const shown = new URL(url);
    shown.searchParams.delete('access_token');
    return {
      kind,
      url: shown.href,
      opened: false,
      healthy: false,
      heard: true,
      lastHeardAt: this.now(),
      heardCount: 0,
      selection,
      keys,
      pendingSelections: 0,
      selectionFrozen: false,
      send,
      close,
    };
  }

  private openWebSocket(token: string | null): Conn {
    const inProtocol = token !== null && (this.#opts.tokenTransport ?? 'protocol') === 'protocol';
    const selection = this.interests.selection;
    const { keys, snapshot } = this.keysForUrl();
    const url = this.endpoint('websocket', inProtocol ? null : token, selection, true, keys, snapshot);
    // Cookie auth offers no subprotocol, so it works with gateways of any version.
    const ws = inProtocol ? new this.WS!(url, [WS_PROTOCOL, `bearer.${token}`]) : new this.WS!(url);
    const conn = this.newConn(
      'websocket',
      url,
      selection,
      keys,
      (data) => ws.send(data),
      () => {
        ws.onopen = ws.onmessage = ws.onclose = ws.onerror = null;
        try {
          ws.close(1000);
        } catch {
          // already closed
        }
      },
    );
    ws.onopen = () => {
      if (inProtocol && ws.protocol !== WS_PROTOCOL) {
        // Browsers fail such a handshake themselves; anything else (a proxy, a fake) must
        // not be trusted with a session it did not agree to.
        this.emitError({
          code: 'connect_failed',
          message: `gateway selected subprotocol ${JSON.stringify(ws.protocol ?? '')}, expected ${WS_PROTOCOL}`,
        });
        this.onConnClose(conn);
        return;
      }
      this.onConnOpen(conn);
    };
    ws.onmessage = (ev) => {
      if (this.conn === conn && typeof ev.data === 'string') this.handleText(conn, ev.data);
    };
    // Browsers always follow `error` with `close`, which carries the code; act there only.
    ws.onerror = () => {};
    ws.onclose = (ev) => this.onConnClose(conn, ev.code, ev.reason);
    return conn;
  }

  private openEventSource(token: string | null, resume = true): Conn {
    const selection = this.interests.selection;
    const { keys, snapshot } = this.keysForUrl();
    // Over fetch the token goes in `Authorization`, out of the URL and the console.
    const viaFetch = this.sseOverFetch();
    const url = this.endpoint('sse', viaFetch ? null : token, selection, resume, keys, snapshot);
    // Cookie mode: a cross-origin EventSource only sends cookies with withCredentials.
    // Token mode sends none, so the gateway may answer any origin with `*`.
    const es = viaFetch
      ? new FetchEventSource(url, token, this.fetchImpl!)
      : token === null
        ? new this.ES!(url, { withCredentials: true })
        : new this.ES!(url);
    const conn = this.newConn(
      'sse',
      url,
      selection,
      keys,
      () => {},
      () => {
        es.onopen = es.onmessage = es.onerror = null;
        es.close();
      },
    );
    es.onopen = () => this.onConnOpen(conn);
    const onText = (ev: MessageEvent) => {
      if (this.conn === conn && typeof ev.data === 'string') this.handleText(conn, ev.data);
    };
    es.onmessage = onText;
    // Named events carry control JSON (`{"type":"resync"}`, `{"type":"close",...}`, heartbeats).
    es.addEventListener('resync', onText);
    es.addEventListener('snapshot', onText);
    es.addEventListener('close', onText);
    es.addEventListener('heartbeat', (ev: MessageEvent) => {
      if (this.conn !== conn) return;
      this.noteHeard(conn);
      // A quiet stream's heartbeat carries the gateway's resume position as its `id:`.
      this.notePosition(ev.lastEventId);
    });
    // We close the EventSource on any error and reconnect ourselves instead of letting the
    // browser retry: its retry would reuse the old URL (stale token, stale last_event_id)
    // and skip getToken(). The gateway staggers shutdown closes, and our jitter spreads the
    // rest, so ignoring its `retry:` hint costs little.
    es.onerror = () => {
      if (es instanceof FetchEventSource) conn.failure = es.failure;
      this.onConnClose(conn);
    };
    return conn;
  }

  /**
   * The keys a new connection selects, and whether it asks for a snapshot: always while
   * keys are watched (on a served resume it follows the replay, so a job mounted while the
   * connection was down gets its state too), and when something registered since the last
   * one starts empty.
   */
  private keysForUrl(): { keys: string[] | null; snapshot: boolean } {
    // After a 400 for the selection, the connection asks for everything: every key too.
    const keys = this.selectAll ? null : this.watched.selection;
    const owed = this.watched.takeFresh();
    return { keys, snapshot: owed || keys !== null };
  }

  private onConnOpen(conn: Conn): void {
    if (conn === this.trial) this.adoptTrial(conn);
    else if (conn === this.conn) this.handleOpen(conn);
  }

  private onConnClose(conn: Conn, code?: number, reason?: string): void {
    if (conn === this.trial) this.trialFailed();
    else if (conn === this.conn) this.handleDrop(conn, code, reason);
  }

  private handleOpen(conn: Conn): void {
    conn.opened = true;
    this.signedOutAttempts = 0;
    conn.lastHeardAt = this.now();
    clearTimeout(this.connectTimer);
    if (conn.kind === 'websocket') {
      this.wsFailures = 0;
      this.wsBlocked = 0;
      this.wsEverOpened = true;
    }
    this.setState('open');
    // On SSE because WebSocket was blocked: keep trying WebSocket beside it.
    if (conn.kind === 'sse' && this.fellBack && this.wsRetryTimer === undefined && this.trial === null) {
      this.scheduleWsRetry();
    }
    this.healthyTimer = setTimeout(() => this.markHealthy(conn), this.cfg.healthyAfterMs);
    if (this.#token !== null) this.scheduleRefresh(decodeTokenTimes(this.#token));
    this.startLiveness(conn);
    // Components may have mounted or unmounted while this connection was being made.
    if (conn.kind === 'websocket') this.syncSelection();
  }

  /**
   * A connection can look open long after it died (a laptop slept, the network changed).
   * WebSocket: ping every `pingIntervalMs`; nothing at all heard since the previous ping
   * means dead. SSE: the gateway sends a heartbeat event every few seconds; nothing heard
   * for `sseHeartbeatTimeoutMs` means dead. A tick that fires far later than asked proves
   * nothing by itself: Chrome runs the timers of a hidden tab about once a minute while
   * its sockets carry on. So a late tick asks (`checkLiveness`) instead of judging.
   */
  private startLiveness(conn: Conn): void {
    const ws = conn.kind === 'websocket';
    const every = ws ? this.cfg.pingIntervalMs : this.cfg.sseHeartbeatTimeoutMs / 2;
    if (every <= 0) return;
    let lastTick = this.now();
    this.livenessTimer = setInterval(() => {
      if (this.conn !== conn) return;
      const now = this.now();
      const late = now - lastTick > 2 * every + 5_000;
      lastTick = now;
      if (late) {
        this.checkLiveness(conn);
        return;
      }
      const dead = ws ? !conn.heard : now - conn.lastHeardAt >= this.cfg.sseHeartbeatTimeoutMs;
      if (dead) {
        this.handleDrop(conn, undefined, undefined, ws ? 'no answer to a ping' : 'no heartbeat');
        return;
      }
      if (ws) {
        conn.heard = false;
        this.trySend(conn, { type: 'ping' });
      }
    }, every);
  }

  /**
   * Is this connection alive? WebSocket: a ping that must be answered (by anything)
   * within `pongTimeoutMs`. SSE has no channel back: the gateway's next heartbeat must
   * arrive within half of `sseHeartbeatTimeoutMs`. Used when a timer ran late and when a
   * tab comes back, instead of reconnecting on suspicion.
   */
  private checkLiveness(conn: Conn): void {
    if (this.checkTimer !== undefined || this.conn !== conn || !conn.opened) return;
    const ws = conn.kind === 'websocket';
    const grace = ws ? this.cfg.pongTimeoutMs : this.cfg.sseHeartbeatTimeoutMs / 2;
    if (grace <= 0) return;
    const before = conn.heardCount;
    if (ws) this.trySend(conn, { type: 'ping' });
    this.debug('liveness check', { transport: conn.kind });
    this.checkTimer = setTimeout(() => {
      this.checkTimer = undefined;
      if (this.conn === conn && conn.heardCount === before) {
        this.handleDrop(conn, undefined, undefined, 'no answer to a liveness check');
      }
    }, grace);
  }

  /** Backoff resets only once a connection proved useful (an event, or time open), so accept-then-drop loops still back off. */
  private markHealthy(conn: Conn): void {
    if (conn.healthy || this.conn !== conn) return;
    conn.healthy = true;
    this.attempt = 0;
    clearTimeout(this.healthyTimer);
  }

  private noteHeard(conn: Conn): void {
    conn.heard = true;
    conn.heardCount++;
    conn.lastHeardAt = this.now();
  }

  private handleText(conn: Conn, text: string): void {
    this.noteHeard(conn);
    let msg: unknown;
    try {
      msg = JSON.parse(text);
    } catch {
      return; // not ours to crash on
    }
    if (!isRecord(msg)) return;
    if ('event_id' in msg) {
      if (isEnvelope(msg)) {
        this.markHealthy(conn);
        this.deliver(msg, LIVE);
      }
      return;
    }
    // Control messages say nothing about health: a gateway that accepts, says `resync`
    // or `error`, and drops must still meet a growing backoff.
    switch (msg.type) {
      case 'resync':
        for (const cb of [...this.resyncs]) safeCall(cb);
        break;
      case 'refreshed':
        if (typeof msg.exp === 'number') this.handleRefreshed(msg.exp);
        break;
      case 'subscribed':
        if (isStrings(msg.types)) this.handleSubscribed(conn, msg.types, isStrings(msg.keys) ? msg.keys : null);
        break;
      case 'error': {
        const reason = typeof msg.reason === 'string' ? msg.reason : 'unknown';
        if (this.selectionRefused(conn, reason)) break;
        const refresh = reason.startsWith('refresh_');
        // A failed refresh leaves the connection alive until the old exp; the gateway then
        // closes with 4001 and the reconnect fetches a new token. Nothing to retry here.
        if (refresh) this.#pendingToken = null;
        this.emitError({
          code: refresh ? 'refresh_failed' : 'server_error',
          message: `gateway error: ${reason}`,
          reason,
        });
        break;
      }
      case 'close': {
        // SSE: the gateway is about to end the stream (shutdown, token_expired, revoked).
        const reason = typeof msg.reason === 'string' ? msg.reason : undefined;
        if (reason === 'revoked') this.revoke(reason);
        else {
          if (reason === 'token_expired') this.#token = null;
          this.handleDrop(conn);
        }
        break;
      }
      case 'position':
        this.notePosition(msg.position);
        break;
      case 'snapshot':
        if (Array.isArray(msg.events)) this.deliverSnapshot(msg.events.filter(isEnvelope), msg.truncated === true);
        break;
      default: // pong, heartbeat and anything newer: liveness was already noted
        break;
    }
  }

  /**
   * A resume position from the gateway (`p:` and 16 hex digits): where its tenant's
   * stream is while nothing this page selects happens, so a quiet page that reconnects
   * resumes instead of being told to `resync`.
   */
  private notePosition(position: unknown): void {
    if (typeof position === 'string' && POSITION.test(position)) this.lastId = position;
  }

  /**
   * A snapshot's events go to the same listeners, marked. Each is delivered even when
   * seen before (after a resync it is the state to show), and remembered so the live
   * stream never repeats it. The resume position stays: a snapshot is no place in the stream.
   */
  private deliverSnapshot(events: RealtimeEvent[], truncated: boolean): void {
    for (const event of events) {
      if (this.disposed) return;
      this.deliver(event, SNAPSHOT);
    }
    const snapshot: Snapshot = { events, truncated };
    for (const cb of [...this.snapshots]) safeCall(cb, snapshot);
  }

  private deliver(event: RealtimeEvent, info: EventInfo): void {
    const fresh = this.seen.add(event.event_id);
    if (!fresh && !info.snapshot) return; // replay seam or redelivery
    if (!info.snapshot) this.lastId = event.event_id;
    if (fresh && KNOWN_EVENT_TYPES.has(event.event_type) && !isCatalogEvent(event)) {
      this.emitError({
        code: 'invalid_event',
        message: `${event.event_type} ${event.event_id} lacks the data fields its type declares; typed listeners skip it`,
      });
    }
    for (const cb of [...this.events]) {
      if (this.disposed) return; // a listener called close()
      safeCall(cb, event, info);
    }
  }

  /** The connection ended or failed: decide between retrying, asking why, falling back and stopping. */
  private handleDrop(conn: Conn, closeCode?: number, reason?: string, why?: string): void {
    this.dropConn();
    this.why =
      why ??
      (closeCode !== undefined && closeCode !== 1006
        ? `closed ${closeCode}${reason ? ` (${reason})` : ''}`
        : conn.opened
          ? 'connection lost'
          : 'attempt failed');
    if (closeCode === CLOSE_REVOKED) {
      this.revoke(reason || 'revoked');
      return;
    }
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
    if (closeCode === CLOSE_TOKEN_EXPIRED) this.#token = null;
    if (closeCode === CLOSE_TOO_BIG) {
      this.emitError({ code: 'message_too_big', message: 'gateway closed the connection: message too big', closeCode });
    }
    if (!conn.opened) {
      void this.explainFailure(conn);
      return;
    }
    // 1001 shutdown, 4000 slow client, 4001 token expired, 4002 idle, network loss:
    // all reconnect with backoff; getToken() runs before the attempt and last_event_id resumes.
    this.scheduleReconnect();
  }

  /** An attempt never opened: ask the gateway why (when we can), then act on the answer. */
  private async explainFailure(conn: Conn): Promise<void> {
    this.setState('reconnecting');
    const gen = this.gen;
    // The token of the attempt that failed (connect() set it; cookie auth has none to show).
    const token = this.#token;
    let result: ProbeResult | null = conn.failure ?? null;
    if (result === null && this.fetchImpl && this.#opts.probe !== false) {
      // Cookie auth has no token to show /auth/check (which answers any origin, without
      // credentials): ask /sse itself, with the cookie, as the browser would connect.
      result =
        token !== null
          ? await probeAuth(this.base!, token, this.fetchImpl, this.cfg.connectTimeoutMs)
          : await probeStream(this.endpoint('sse', null, conn.selection, false, conn.keys), null, this.fetchImpl, this.cfg.connectTimeoutMs);
      if (gen !== this.gen || this.disposed) return;
    }
    if (result === null) {
      // Nothing to ask with: say at least what failed.
      this.emitError({ code: 'connect_failed', message: `could not connect to ${conn.url}`, url: conn.url });
      result = { kind: 'unsupported' };
    }
    const ws = conn.kind === 'websocket';
    switch (result.kind) {
      case 'refused':
        this.handleRefusal(result);
        return;
      case 'bad_types':
        this.refuseSelection(conn);
        break;
      case 'admitted':
        // /auth/check does not look at `types=`: a selection over the gateway's limit
        // fails the handshake just the same. The stream URL with the same types tells.
        if ((conn.selection !== null || conn.keys !== null) && token !== null && this.fetchImpl && !this.selectAll) {
          const again = await probeStream(this.endpoint('sse', null, conn.selection, false, conn.keys), token, this.fetchImpl, this.cfg.connectTimeoutMs);
          if (gen !== this.gen || this.disposed) return;
          if (again.kind === 'bad_types') {
            this.refuseSelection(conn);
            break;
          }
        }
        // The gateway would take this very token, yet the attempt failed: something on the
        // path (a proxy, a firewall) blocks WebSocket; for SSE, most often CORS.
        if (ws) this.countWsBlocked();
        else {
          this.emitError({
            code: 'connect_failed',
            message:
              'the SSE stream failed although the gateway would admit this token: check CORS (a cookie-authenticated page origin must be in GATEWAY_ALLOWED_ORIGINS) and proxies',
          });
        }
        break;
      case 'unsupported':
        if (ws) this.countWsFailure();
        break;
      case 'unreachable':
        // A cookie request from an origin the gateway does not list fails CORS, which
        // looks like a network error: the gateway answering a request without
        // credentials tells the two apart.
        if (token === null && this.fetchImpl && (await this.answers(gen))) {
          this.emitError({
            code: 'connect_failed',
            message: `the gateway at ${conn.url} answers, but not to this page's cookie request: list the page's origin in GATEWAY_ALLOWED_ORIGINS`,
            url: conn.url,
          });
          break;
        }
        if (gen !== this.gen) return;
        // The gateway itself is down (a deploy, an outage), or the host is wrong: no
        // reason to leave WebSocket, every reason to say so.
        this.emitError({
          code: 'unreachable',
          message: `could not reach the gateway at ${conn.url}: a wrong host, DNS, the gateway down, or a proxy error`,
          url: conn.url,
        });
        break;
    }
    this.scheduleReconnect();
  }

  /** 400 `types` before the upgrade: ask for everything (which any limit allows) from now on. */
  private refuseSelection(conn: Conn): void {
    this.selectAll = true;
    this.emitError({
      code: 'invalid_types',
      message: `the gateway refused the selection of ${conn.selection?.length ?? 0} event type patterns (is maxSelectedTypes above its GATEWAY_MAX_INTEREST_PATTERNS?); receiving everything`,
      reason: 'types',
    });
  }

  /** Does the gateway answer HTTP at all (any status) to a request without credentials? */
  private async answers(gen: number): Promise<boolean> {
    const r = await probeAuth(this.base!, '-', this.fetchImpl!, this.cfg.connectTimeoutMs);
    return gen === this.gen && r.kind !== 'unreachable';
  }

  private handleRefusal(r: Extract<ProbeResult, { kind: 'refused' }>): void {
    const detail = { status: r.status, reason: r.reason };
    if (r.status === 401) {
      if (r.reason === 'revoked') {
        this.revoke(r.reason);
        return;
      }
      this.#token = null; // the next attempt asks the token source again
      this.emitError({ code: 'unauthorized', message: `gateway refused the token: ${r.reason || 'unauthorized'}`, ...detail });
      this.scheduleReconnect({ state: 'unauthorized', signedOut: true }); // the next attempt calls getToken() again
      return;
    }
    this.emitError({
      code: 'refused',
      message: `gateway refused the connection: ${r.status} ${r.error || ''} ${r.reason}`.trim(),
      ...detail,
      ...(r.retryAfterMs !== undefined ? { retryAfterMs: r.retryAfterMs } : {}),
    });
    this.scheduleReconnect(r.retryAfterMs !== undefined ? { notBeforeMs: r.retryAfterMs } : {});
  }

  private revoke(reason: string): void {
    this.emitError({ code: 'revoked', message: 'the gateway revoked this session', reason });
    this.halt('revoked');
  }

  /** A WebSocket failure we could not explain: legacy rule, it counts only while WebSocket never worked here. */
  private countWsFailure(): void {
    this.wsFailures++;
    if (!this.wsEverOpened && this.wsFailures >= this.cfg.fallbackAfter) this.fallBack();
  }

  /** The gateway would admit us but WebSocket fails: the path blocks it, even if it worked before. */
  private countWsBlocked(): void {
    this.wsBlocked++;
    if (this.wsBlocked >= this.cfg.fallbackAfter) this.fallBack();
  }

  private fallBack(): void {
    if ((this.answeredTransport ?? this.#opts.transport ?? 'auto') !== 'auto' || this.fellBack || (!this.ES && !this.sseOverFetch())) return;
    this.fellBack = true; // the SSE stream, once open, schedules the WebSocket retries
  }

  // ---- trying WebSocket again while on SSE ------------------------------------------

  private scheduleWsRetry(): void {
    clearTimeout(this.wsRetryTimer);
    this.wsRetryTimer = setTimeout(() => this.tryWebSocketAgain(), this.cfg.wsRetryIntervalMs);
  }

  /**
   * A blocked path may unblock (another network, a fixed proxy). Open a WebSocket beside
   * the SSE stream; if it opens, it takes over (resume and dedupe make the handover
   * seamless), otherwise SSE carries on and we try again later.
   */
  private tryWebSocketAgain(): void {
    this.wsRetryTimer = undefined;
    if (this.disposed || this.halted || !this.fellBack || !this.WS) return;
    const current = this.conn;
    // Not serving right now: the next SSE stream to open schedules the next try.
    if (!current?.opened || current.kind !== 'sse') return;
    let trial: Conn;
    try {
      trial = this.openWebSocket(this.#token);
    } catch {
      this.scheduleWsRetry();
      return;
    }
    this.setTrial(trial, this.#token);
  }

  /**
   * Make-before-break for SSE: a stream with a fresh token or a wider selection opens
   * beside the serving one, which carries on until the new one is open. It needs no
   * `last_event_id`: the old stream delivers everything until the new one is registered
   * (dedupe drops the overlap), so a quiet page is never told to `resync` because its
   * last event left the gateway's history. If it fails, the old stream carries on.
   */
  private openSuccessor(kind: TransportKind, token: string | null): void {
    this.dropTrial();
    let next: Conn;
    try {
      next = kind === 'websocket' ? this.openWebSocket(token) : this.openEventSource(token, false);
    } catch {
      return; // the serving stream carries on; its own end reconnects
    }
    this.debug('opening a successor beside the serving connection', { transport: kind });
    this.setTrial(next, token);
  }

  private setTrial(trial: Conn, token: string | null): void {
    this.trial = trial;
    this.#successorToken = token;
    this.trialTimer = setTimeout(() => this.trialFailed(), this.cfg.connectTimeoutMs);
  }

  private adoptTrial(trial: Conn): void {
    this.trial = null;
    clearTimeout(this.trialTimer);
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    this.gen++; // an attempt in flight (awaiting getToken) must not replace the adopted socket
    this.dropConn();
    this.conn = trial;
    if (trial.kind === 'websocket') this.fellBack = false;
    this._transport = trial.kind;
    this.#token = this.#successorToken;
    this.#successorToken = null;
    this.handleOpen(trial);
  }

  private trialFailed(): void {
    const wsTrial = this.trial?.kind === 'websocket';
    this.dropTrial();
    if (wsTrial && !this.disposed && !this.halted && this.fellBack) this.scheduleWsRetry();
  }

  private dropTrial(): void {
    clearTimeout(this.trialTimer);
    this.trialTimer = undefined;
    const trial = this.trial;
    this.trial = null;
    trial?.close();
  }

  private scheduleReconnect(
    how: { state?: 'reconnecting' | 'unauthorized'; notBeforeMs?: number; signedOut?: boolean } = {},
  ): void {
    if (this.disposed || this.halted || this.stopped) return;
    this.setState(how.state ?? 'reconnecting');
    clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    // Signed out: a timer cannot sign the user in. After a few tries, wait for something
    // that can have changed it (focus, the tab shown again, online) or for reconnect().
    this.signedOutAttempts = how.signedOut ? this.signedOutAttempts + 1 : 0;
    if (this.signedOutAttempts > this.cfg.signedOutRetries) {
      this.why = 'signed out: waiting for focus, the tab shown, online or reconnect()';
      this.retryAt = null;
      this.publish();
      this.debug(this.why);
      return;
    }
    const ceiling = Math.min(this.cfg.backoffMaxMs, this.cfg.backoffInitialMs * 2 ** Math.min(this.attempt, 30));
    this.attempt++;
    const delay = Math.max(how.notBeforeMs ?? 0, this.random() * ceiling);
    this.retryAt = this.now() + delay;
    this.publish();
    this.debug('reconnecting', { inMs: Math.round(delay), attempt: this.attempt, reason: this.why });
    this.retryTimer = setTimeout(() => {
      this.retryTimer = undefined;
      this.retryAt = null;
      void this.connect();
    }, Math.min(delay, MAX_TIMER_MS));
  }

  /** Per-connection timers and the connection itself; leaves the retry timer and the trial alone. */
  private dropConn(): void {
    clearTimeout(this.connectTimer);
    clearTimeout(this.healthyTimer);
    clearTimeout(this.refreshTimer);
    clearInterval(this.livenessTimer);
    clearTimeout(this.checkTimer);
    this.connectTimer = this.healthyTimer = this.refreshTimer = this.livenessTimer = this.checkTimer = undefined;
    this.#pendingToken = null;
    const conn = this.conn;
    this.conn = null;
    conn?.close();
  }

  // ---- selecting event types -------------------------------------------------------

  /**
   * A registration came or went. The gateway hears of it a little later, once for a whole
   * burst: one render pass mounts and unmounts many hooks, StrictMode does it twice.
   */
  private selectionChanged(): void {
    if (this.disposed || this.selectionTimer !== undefined) return;
    this.selectionTimer = setTimeout(() => this.syncSelection(), this.cfg.selectionDebounceMs);
  }

  /** Brings the current connection's selection in line with what is needed now. */
  private syncSelection(): void {
    clearTimeout(this.selectionTimer);
    this.selectionTimer = undefined;
    const conn = this.conn;
    if (!conn || this.disposed) return; // the next attempt puts the current selection in its URL
    if (conn.kind === 'sse') {
      this.syncStream(conn);
      return;
    }
    if (!conn.opened || conn.selectionFrozen) return;
    if (this.watched.needsAll && conn.keys !== null) {
      // No message selects every key again: a socket without `keys=` replaces this one
      // once it is open (make-before-break), resuming from the last event.
      if (this.trial === null) this.openSuccessor('websocket', this.#token);
      return;
    }
    this.syncTypes(conn, this.interests.selection);
    this.syncKeys(conn, this.watched.selection, this.watched.takeFresh());
  }

  /**
   * SSE has no channel back: a stream with the new `types=` and `keys=` opens beside
   * this one, which serves until it is open (make-before-break). Only when the stream
   * lacks something, or a newly mounted job needs its state: one that carries more than
   * needed serves until it next reconnects anyway (listeners filter). A stream still
   * opening is simply remade.
   */
  private syncStream(conn: Conn): void {
    const owed = this.watched.owesSnapshot;
    const covers = (c: Conn) =>
      selectionCovers(c.selection, this.interests.selection) && this.keysCover(c.keys, this.watched.selection);
    if (covers(conn) && !owed) return;
    if (conn.opened) {
      if (this.trial === null || !covers(this.trial) || owed) this.openSuccessor('sse', this.#token);
    } else {
      this.dropConn();
      this.scheduleReconnect();
    }
  }

  /** Whether a connection holding `have` (null: every key) receives the state of every key needed. */
  private keysCover(have: readonly string[] | null, wanted: readonly string[] | null): boolean {
    if (have === null) return true;
    if (this.watched.needsAll) return false;
    return wanted === null || wanted.every((k) => have.includes(k));
  }

  private syncTypes(conn: Conn, wanted: string[] | null): void {
    if (sameSelection(conn.selection, wanted)) return;
    const current = conn.selection;
    const target = wanted ?? ['#'];
    if (current === null) {
      // The gateway's default (everything) is replaced by the first subscribe's list.
      this.sendSelection(conn, { type: 'subscribe', types: target });
    } else {
      // Make-before-break: what is new is subscribed before what is gone is dropped, so
      // a pattern replaced by a wider one is never missing in between. Only when the sum
      // would pass the gateway's limit (maxSelectedTypes stands for it) does the drop go
      // first; what stays selected is selected throughout either way.
      const drop = current.filter((p) => !target.includes(p));
      const add = target.filter((p) => !current.includes(p));
      const addFirst = current.length + add.length <= this.cfg.maxSelectedTypes;
      if (addFirst && add.length > 0) this.sendSelection(conn, { type: 'subscribe', types: add });
      if (drop.length > 0) this.sendSelection(conn, { type: 'unsubscribe', types: drop });
      if (!addFirst && add.length > 0) this.sendSelection(conn, { type: 'subscribe', types: add });
    }
    conn.selection = [...target];
  }

  /**
   * `watch` and `unwatch`, make-before-break as for types. `owed`: something registered
   * since the last snapshot starts empty, so the `watch` asks for one (the gateway sends
   * the state of the whole new selection next); with every key selected, a `subscribe`
   * of the types already held asks for it instead.
   */
  private syncKeys(conn: Conn, wanted: string[] | null, owed: boolean): void {
    const current = conn.keys;
    if (wanted === null) {
      // Nothing watched (the keys held serve nobody and cost nothing), or every key held.
      if (owed && current === null) {
        this.sendSelection(conn, { type: 'subscribe', types: conn.selection ?? ['#'], snapshot: true });
      }
      return;
    }
    const add = wanted.filter((k) => !current?.includes(k));
    const drop = current?.filter((k) => !wanted.includes(k)) ?? [];
    const watch = () => {
      if (add.length > 0 || owed) {
        this.sendSelection(conn, { type: 'watch', keys: add.length > 0 ? add : wanted, snapshot: owed });
      }
    };
    const addFirst = (current?.length ?? 0) + add.length <= this.cfg.maxSelectedTypes;
    if (addFirst) watch();
    if (drop.length > 0) this.sendSelection(conn, { type: 'unwatch', keys: drop });
    if (!addFirst) watch();
    conn.keys = [...wanted];
  }

  private sendSelection(conn: Conn, msg: SelectionMessage): void {
    conn.pendingSelections++;
    this.trySend(conn, msg);
  }

  /** `{"type":"subscribed"}`: once every request is answered, the gateway's word is what it holds. */
  private handleSubscribed(conn: Conn, types: string[], keys: string[] | null): void {
    if (conn.pendingSelections === 0) return;
    conn.pendingSelections--;
    if (conn.pendingSelections === 0) {
      conn.selection = types;
      conn.keys = keys;
    }
  }

  /** An error answering a selection request; false when the error is about something else. */
  private selectionRefused(conn: Conn, reason: string): boolean {
    if (conn.pendingSelections === 0) return false;
    if (reason === 'unknown_message') {
      // A gateway older than selections: it ignores `types=` as well and sends everything.
      conn.pendingSelections = 0;
      conn.selectionFrozen = true;
      conn.selection = null;
      return true;
    }
    if (reason === 'invalid_keys') {
      conn.pendingSelections--;
      this.emitError({
        code: 'invalid_keys',
        message: 'the gateway refused to watch more state keys (is maxSelectedTypes above its GATEWAY_MAX_INTEREST_PATTERNS?); selecting every key',
        reason,
      });
      // Receiving every job's state is harmless, missing the watched one is not.
      this.releaseKeyRefusal ??= this.watched.add(null);
      this.selectionChanged();
      return true;
    }
    if (reason !== 'invalid_types') return false;
    conn.pendingSelections--;
    this.emitError({
      code: 'invalid_types',
      message: 'the gateway refused a selection of event types (is maxSelectedTypes above its GATEWAY_MAX_INTEREST_PATTERNS?); receiving everything on this connection',
      reason,
    });
    // Receiving more than needed is harmless, missing events is not: everything, for the
    // rest of this connection. An unsubscribe is never refused, and `#` alone fits any limit.
    if (!conn.selectionFrozen) {
      conn.selectionFrozen = true;
      if (conn.selection !== null) this.sendSelection(conn, { type: 'unsubscribe', types: conn.selection });
      this.sendSelection(conn, { type: 'subscribe', types: ['#'] });
      conn.selection = ['#'];
    }
    return true;
  }

  // ---- token refresh --------------------------------------------------------------

  /**
   * Plans the next refresh. Three guards keep it from spinning: a delay never below
   * `MIN_REFRESH_DELAY_MS` from now nor from the previous refresh, and timers capped to
   * what `setTimeout` can hold (a 45-day token, or an `exp` in milliseconds, would
   * otherwise fire at once, forever), re-armed until the refresh is really due.
   */
  private scheduleRefresh(times: TokenTimes): void {
    clearTimeout(this.refreshTimer);
    const now = this.now();
    const planned = refreshDelay(times, now, this.cfg.refreshBeforeExpiryMs);
    if (planned === null) return; // no exp: nothing to plan; the gateway will tell us (4001 / close)
    let dueAt = now + planned;
    if (this.lastRefreshAt !== undefined) dueAt = Math.max(dueAt, this.lastRefreshAt + MIN_REFRESH_DELAY_MS);
    this.armRefresh(dueAt, times);
  }

  private armRefresh(dueAt: number, times: TokenTimes): void {
    this.refreshTimer = setTimeout(
      () => {
        if (this.now() < dueAt) this.armRefresh(dueAt, times);
        else void this.refresh(times);
      },
      Math.min(Math.max(dueAt - this.now(), 0), MAX_TIMER_MS),
    );
  }

  private async refresh(times: TokenTimes): Promise<void> {
    const conn = this.conn;
    if (!conn?.opened) return;
    const gen = this.gen;
    this.lastRefreshAt = this.now();
    let token: string | null;
    try {
      token = checkToken(
        await withDeadline(this.#getToken(), this.cfg.connectTimeoutMs, 'getToken()'),
        conn.kind === 'websocket' && (this.#opts.tokenTransport ?? 'protocol') === 'protocol',
      );
    } catch (cause) {
      if (gen === this.gen) this.emitError({ code: 'token_error', message: 'getToken() failed during refresh', cause });
      return; // the gateway closes at exp and the reconnect asks again
    }
    if (gen !== this.gen || this.conn !== conn) return;

    if (token === this.#token) {
      // The app has nothing fresher yet: ask again later while the token lives, a little
      // less eagerly each time.
      const wait = MIN_REFRESH_DELAY_MS * 2 ** Math.min(this.sameTokenRetries++, 6);
      if (times.exp !== undefined && this.now() + wait < times.exp * 1000) {
        this.armRefresh(this.now() + wait, times);
      }
      return;
    }
    this.sameTokenRetries = 0;
    if (conn.kind === 'websocket' && token !== null) {
      this.#pendingToken = token;
      this.trySend(conn, { type: 'refresh', token });
      return;
    }
    // SSE has no in-band channel (and a WebSocket can't switch to cookie auth in band):
    // a new stream with the new credentials opens beside the old one, which serves until
    // the new one is open.
    this.openSuccessor(conn.kind, token);
  }

  private handleRefreshed(exp: number): void {
    const token = this.#pendingToken;
    if (token === null) return;
    this.#pendingToken = null;
    this.#token = token;
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
    // The cause of an error is gone once a connection opens, a new start begins, or the
    // app disconnected.
    if (state === 'open' || state === 'connecting' || state === 'disconnected') {
      this._error = null;
      if (state !== 'disconnected') this.why = null;
    }
    if (state !== 'reconnecting' && state !== 'unauthorized') this.retryAt = null;
    const changed = this._state !== state;
    this._state = state;
    this.publish();
    if (!changed) return;
    this.debug(`state ${state}`, this.why ? { reason: this.why } : undefined);
    for (const cb of [...this.states]) safeCall(cb, state);
  }

  /** A new status snapshot (a new object only when something changed, for React's useSyncExternalStore). */
  private publish(): void {
    const prev = this._status;
    const next: ConnectionStatus = {
      state: this._state,
      reason: this.why,
      retryAt: this.retryAt,
      error: this._error,
      transport: this._transport,
    };
    if ((Object.keys(next) as (keyof ConnectionStatus)[]).every((k) => prev[k] === next[k])) return;
    this._status = next;
    for (const cb of [...this.statuses]) safeCall(cb, next);
  }

  private debug(message: string, detail?: object): void {
    const sink = this.#opts.debug;
    if (!sink) return;
    if (typeof sink === 'function') sink(message, detail);
    else console.debug(`[realtime] ${message}`, detail ?? '');
  }

  private emitError(e: Omit<RealtimeError, 'severity'>): void {
    const error: RealtimeError = { ...e, severity: SEVERITY[e.code] ?? 'retrying' };
    this.debug(`error ${error.code}: ${error.message}`);
    if (error.severity !== 'warning') {
      this._error = error;
      this.why = error.code;
      this.publish();
    }
    for (const cb of [...this.errors]) safeCall(cb, error);
  }
}

/** getToken, the token URL, or cookie auth; a config with none of them is a mistake. */
function tokenSource(
  opts: RealtimeClientOptions,
  fetchImpl: typeof fetch | undefined,
  configure: (answer: TokenAnswer) => void,
): () => Promise<string | null> {
  const { getToken, tokenUrl, cookieAuth } = opts;
  const given = [getToken !== undefined, tokenUrl !== undefined, cookieAuth === true].filter(Boolean).length;
  if (given !== 1) {
    throw new TypeError('realtime-client: give exactly one of `getToken`, `tokenUrl` or `cookieAuth: true`');
  }
  if (getToken !== undefined) {
    if (typeof getToken !== 'function') throw new TypeError('realtime-client: `getToken` must be a function');
    return () => Promise.resolve().then(() => getToken()) as Promise<string | null>;
  }
  if (tokenUrl !== undefined) {
    if (typeof tokenUrl !== 'string' || tokenUrl === '') {
      throw new TypeError('realtime-client: `tokenUrl` must be a non-empty string');
    }
    return async () => {
      if (!fetchImpl) throw new TokenError('fetch is not available to read tokenUrl');
      const answer = await fetchTokenAnswer(tokenUrl, fetchImpl);
      configure(answer);
      return answer.token;
    };
  }
  return () => Promise.resolve(null);
}

/** The HTTP status a token source failed with: a `TokenError`'s, or any error's numeric `status`. */
function errorStatus(cause: unknown): number | undefined {
  const status = isRecord(cause) || cause instanceof Error ? (cause as { status?: unknown }).status : undefined;
  return typeof status === 'number' ? status : undefined;
}

/** How bad each error is: fatal ones stop the client, retrying ones pass, warnings leave it live. */
const SEVERITY: Partial<Record<RealtimeErrorCode, ErrorSeverity>> = {
  revoked: 'fatal',
  identity_mismatch: 'fatal',
  insecure_url: 'fatal',
  no_transport: 'fatal',
  invalid_options: 'fatal',
  refresh_failed: 'warning',
  server_error: 'warning',
  invalid_types: 'warning',
  invalid_keys: 'warning',
  invalid_event: 'warning',
};

function subscribe<T>(set: Set<T>, cb: T): Unsubscribe {
  set.add(cb);
  return () => {
    set.delete(cb);
  };
}

/** A throwing listener must not break delivery to the others or the connection. */
function safeCall<A extends unknown[]>(cb: (...args: A) => void, ...args: A): void {
  try {
    cb(...args);
  } catch (err) {
    if (typeof reportError === 'function') reportError(err);
    else console.error(err);
  }
}

const LIVE: EventInfo = Object.freeze({ snapshot: false });
const SNAPSHOT: EventInfo = Object.freeze({ snapshot: true });

/** What the client takes for an event: an envelope with a non-empty id and a type. */
function isEnvelope(v: unknown): v is RealtimeEvent {
  return isRecord(v) && typeof v.event_id === 'string' && v.event_id !== '' && typeof v.event_type === 'string';
}

function isStrings(v: unknown): v is string[] {
  return Array.isArray(v) && v.every((t) => typeof t === 'string');
}

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}
