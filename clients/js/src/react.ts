'use client';
/**
 * React bindings: a provider holding one client and hooks over it.
 * Written with createElement (no JSX) so the package needs no JSX build setup.
 */
import {
  createContext,
  createElement,
  useCallback,
  useContext,
  useEffect,
  useMemo,
  useRef,
  useState,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from 'react';
import type { ConnectionState, ConnectionStatus, EventInfo, RealtimeClient, RealtimeClientOptions, RealtimeError } from './api.js';
import { createRealtimeClient } from './client.js';
import { isCatalogEvent, KNOWN_EVENT_TYPES, type EventFor, type NotificationCreated } from './events.js';
import {
  DEFAULT_MAX_NOTIFICATIONS,
  INITIAL_NOTIFICATIONS,
  INITIAL_RENDER_PROGRESS,
  markNotificationsRead,
  reduceNotifications,
  reduceRenderProgress,
  type NotificationsState,
  type RenderProgressOptions,
  type RenderProgressState,
} from './state.js';

// The reducers live in the core entry (usable in server components); here too for the hooks' users.
export {
  INITIAL_NOTIFICATIONS,
  INITIAL_RENDER_PROGRESS,
  markNotificationsRead,
  reduceNotifications,
  reduceRenderProgress,
  type NotificationsState,
  type RenderProgressOptions,
  type RenderProgressState,
  type RenderStatus,
} from './state.js';

// undefined = no provider at all (a bug); null = provider still creating its client (or it could not).
const RealtimeContext = createContext<RealtimeClient | null | undefined>(undefined);

/** The provider could not create a client (bad options): nothing will ever connect. */
const FailureContext = createContext<RealtimeError | null>(null);

export interface RealtimeProviderProps {
  /** A client you own: you create it and you close it. */
  client?: RealtimeClient | null;
  /**
   * Or options: the provider creates the client in the first render in the browser (so
   * `useRealtimeClient()` is never null there; never during server rendering) and starts
   * it once the hooks mounted with it have selected their types. Options without
   * functions (`tokenUrl`, `url`, `cookieAuth`...) are serializable, so a server layout
   * can render the provider directly. A change to any option that is data (everything
   * but functions) makes a new client; functions (`getToken`, the callbacks) are always
   * called in their latest version, so inline functions are fine. Invalid options do not
   * throw during rendering: `useRealtimeError()` reports them (code `invalid_options`).
   */
  options?: RealtimeClientOptions;
  /**
   * false: the provider's client connects nothing (state `disconnected`), e.g. while the
   * user is signed out; hooks stay mounted and resume when it turns true. Default true.
   */
  enabled?: boolean;
  children?: ReactNode;
}

interface Made {
  client: RealtimeClient | null;
  failure: RealtimeError | null;
}

/** The options that make a client: every data option (functions are read through a ref). */
function optionsKey(options: RealtimeClientOptions | undefined): string {
  if (options === undefined) return '';
  return JSON.stringify(options, (_, v: unknown) => (typeof v === 'function' ? `fn` : v));
}

export function RealtimeProvider({ client, options, enabled = true, children }: RealtimeProviderProps): ReactElement {
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  const owns = client === undefined && options !== undefined;
  const key = owns ? optionsKey(options) : '';

  // Made during render (the constructor has no side effects: nothing connects or listens
  // until the effect below starts it), so hooks have the client from their first render.
  // Not on the server: nothing there may connect, and a relative `url` cannot resolve.
  const made = useMemo<Made>(() => {
    if (!owns || typeof window === 'undefined') return { client: null, failure: null };
    const opts = () => latest.current!;
    try {
      return {
        client: createRealtimeClient({
          ...opts(),
          autoConnect: false,
          getToken: opts().getToken !== undefined ? () => opts().getToken!() : undefined,
          debug: typeof opts().debug === 'function' ? (m, d) => (opts().debug as (m: string, d?: object) => void)(m, d) : opts().debug,
          onResync: () => opts().onResync?.(),
          onStateChange: (s) => opts().onStateChange?.(s),
          onError: (e) => opts().onError?.(e),
        }),
        failure: null,
      };
    } catch (cause) {
      const failure: RealtimeError = {
        code: 'invalid_options',
        severity: 'fatal',
        message: cause instanceof Error ? cause.message : String(cause),
        cause,
      };
      return { client: null, failure };
    }
    // `key` stands for the options' data; functions are read through `latest`.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [owns, key]);

  useEffect(() => {
    if (made.failure) latest.current?.onError?.(made.failure);
  }, [made]);

  // Started only once the hooks mounted with the provider have selected their types (their
  // effects run before this one): the first connection then carries them, instead of,
  // over SSE, a stream of everything that no later selection replaces. Disconnected (not
  // closed) on cleanup, so StrictMode's unmount and mount again reuse the same client; a
  // disconnected client holds no timer, socket or listener.
  const owned = made.client;
  useEffect(() => {
    if (!owned) return;
    if (enabled) owned.reconnect();
    else owned.disconnect();
    return () => owned.disconnect();
  }, [owned, enabled]);

  const value = client !== undefined ? client : owned;

  return createElement(
    RealtimeContext.Provider,
    { value },
    createElement(FailureContext.Provider, { value: owns ? made.failure : null }, children),
  );
}

/** The provider's client; null only during server rendering (or with invalid options). Throws outside a provider. */
export function useRealtimeClient(): RealtimeClient | null {
  const client = useContext(RealtimeContext);
  if (client === undefined) throw new Error('realtime-client: hook used outside <RealtimeProvider>');
  return client;
}

const NOT_YET: ConnectionStatus = { state: 'connecting', reason: null, retryAt: null, error: null, transport: null };

/**
 * State, reason, next retry, current error and transport in one snapshot. `connecting`
 * until the provider has a client (and during server rendering); `closed` with
 * `invalid_options` if it could not make one.
 */
export function useConnectionStatus(): ConnectionStatus {
  const client = useRealtimeClient();
  const failure = useContext(FailureContext);
  const subscribe = useCallback((notify: () => void) => (client ? client.onStatusChange(notify) : () => {}), [client]);
  const status = useSyncExternalStore(
    subscribe,
    () => client?.status ?? NOT_YET,
    () => NOT_YET,
  );
  return failure ? { ...NOT_YET, state: 'closed', reason: failure.code, error: failure } : status;
}

/**
 * What keeps the page from being live, or null: a signed-out user, a refusal, an
 * unreachable gateway, bad options. `fatal` errors stay until `reconnect()`; `retrying`
 * ones clear once a connection opens. Warnings (a bad event, a refused refresh) never
 * show here: they reach `onError`, and the page stays live.
 */
export function useRealtimeError(): RealtimeError | null {
  return useConnectionStatus().error;
}

/** Connection state; 'connecting' until the provider has a client (and during SSR), 'closed' if it could not make one. */
export function useConnectionState(): ConnectionState {
  return useConnectionStatus().state;
}

/**
 * Counts `resync` signals. Put it in the dependencies of whatever loads state over REST
 * (or in a SWR/React Query key) so a resync refetches.
 */
export function useResyncCount(): number {
  const client = useRealtimeClient();
  const [count, setCount] = useState(0);
  useEffect(() => client?.onResync(() => setCount((n) => n + 1)), [client]);
  return count;
}

/**
 * Keeps these event types selected (topic patterns: `*` one word, `#` zero or more) while
 * the component is mounted, for a component that reads events some other way. The hooks
 * of this module select what they need themselves. A bad pattern throws.
 */
export function useEventTypes(types: string | readonly string[]): void {
  const client = useRealtimeClient();
  const key = typeof types === 'string' ? types : types.join(',');
  useEffect(() => {
    if (!client || key === '') return;
    return client.select(key.split(','));
  }, [client, key]);
}

/**
 * Calls `handler` with every event of these types (exact types, typed from
 * `EventCatalog`, or topic patterns: `*` one word, `#` zero or more) while the component
 * is mounted, and selects them; `info.snapshot` marks the events of a snapshot. The
 * latest `handler` is called, so an inline function is
 * fine. Catalog events without their declared fields are skipped (and reported as
 * `invalid_event`). A bad pattern throws.
 */
export function useEvent<T extends string>(
  types: T | readonly T[],
  handler: (event: EventFor<T>, info: EventInfo) => void,
): void {
  const client = useRealtimeClient();
  const latest = useRef(handler);
  useEffect(() => {
    latest.current = handler;
  });
  const key = typeof types === 'string' ? types : types.join(',');
  useEffect(() => {
    if (!client || key === '') return;
    return client.onEvent(
      (e, info) => {
        if (KNOWN_EVENT_TYPES.has(e.event_type) && !isCatalogEvent(e)) return;
        latest.current(e as EventFor<T>, info);
      },
      { types: key.split(',') },
    );
  }, [client, key]);
}

// ---- render progress ---------------------------------------------------------------

export interface UseRenderProgressOptions extends RenderProgressOptions {
  /**
   * The job's state as the server rendered it (e.g. from the platform's REST API, folded
   * with `reduceRenderProgress`), shown until the gateway's snapshot or an event says more.
   */
  initial?: RenderProgressState;
}

export interface RenderProgress extends RenderProgressState {
  /** Increments on each resync: refetch the job over REST when it changes. */
  resyncCount: number;
}

/**
 * Live progress of one render job. Watches the job while mounted (selects `render.job.#`
 * and `keys=<jobId>` with a snapshot), so it shows the job's current state as soon as the
 * gateway's snapshot arrives, then every change. Starts from `initial` (default
 * 'unknown') and starts again from it when `jobId` changes.
 */
export function useRenderProgress(jobId: string | null | undefined, options: UseRenderProgressOptions = {}): RenderProgress {
  const client = useRealtimeClient();
  const resyncCount = useResyncCount();
  const initial = options.initial ?? INITIAL_RENDER_PROGRESS;
  const initialRef = useRef(initial);
  useEffect(() => {
    initialRef.current = initial;
  });
  // Keyed by job so a jobId change shows `initial` at once instead of the old job's state.
  const [slot, setSlot] = useState<{ jobId: string | null | undefined; state: RenderProgressState }>({
    jobId,
    state: initial,
  });
  const origins = options.allowedOrigins;
  const originsKey = origins?.join(' ');
  useEffect(() => {
    if (!client || !jobId) return;
    const opts = origins === undefined ? {} : { allowedOrigins: origins };
    return client.onJob(jobId, (event) =>
      setSlot((prev) => ({
        jobId,
        state: reduceRenderProgress(prev.jobId === jobId ? prev.state : initialRef.current, event, opts),
      })),
    );
    // originsKey stands for `origins`: a new array with the same origins must not resubscribe.
    // eslint-disable-next-line react-hooks/exhaustive-deps
  }, [client, jobId, originsKey]);
  const state = slot.jobId === jobId ? slot.state : initial;
  return { ...state, resyncCount };
}

// ---- notifications -------------------------------------------------------------------

export interface Notifications {
  /** notification.created.v1 events received by this client's bells, newest first. */
  items: NotificationCreated[];
  /** How many arrived since the last markAllRead(), in any bell of this client. */
  unread: number;
  markAllRead: () => void;
  /** Increments on each resync: refetch the notification list when it changes. */
  resyncCount: number;
}

/**
 * One list per client: every bell of a page shows the same items and unread count, and
 * a bell that unmounts on navigation and mounts again finds them kept. It listens while
 * any bell is mounted.
 */
class NotificationStore {
  state: NotificationsState = INITIAL_NOTIFICATIONS;
  /** Whether anything reached the list yet (a notification, a read mark, an `initial`). */
  private touched = false;
  /** The largest `max` any bell asked for: what the list keeps. */
  keep = DEFAULT_MAX_NOTIFICATIONS;
  private readonly notify = new Set<() => void>();
  private off: (() => void) | null = null;

  constructor(private readonly client: RealtimeClient) {}

  subscribe = (cb: () => void): (() => void) => {
    this.notify.add(cb);
    // All of notification.# is selected while a bell is mounted; it lists the new ones.
    this.off ??= this.client.onNotification((event) => this.set(reduceNotifications(this.state, event, { max: this.keep })));
    return () => {
      this.notify.delete(cb);
      if (this.notify.size === 0) {
        this.off?.();
        this.off = null;
      }
    };
  };

  markAllRead = (): void => this.set(markNotificationsRead(this.state));

  /**
   * Starts the list from a server-rendered one, once: only while nothing reached it, so a
   * bell mounted later (on navigation) never takes the page back to what the server saw.
   * Other bells are told after the render (see `useNotifications`).
   */
  seed(initial: NotificationsState): void {
    if (this.touched) return;
    this.touched = true;
    this.state = { items: initial.items.slice(0, this.keep), unread: initial.unread };
  }

  /** Tells every bell that the list changed outside an event (a seed). */
  announce(): void {
    for (const cb of [...this.notify]) cb();
  }

  private set(next: NotificationsState): void {
    this.touched = true;
    if (next === this.state) return;
    this.state = next;
    this.announce();
  }
}

const notificationStores = new WeakMap<RealtimeClient, NotificationStore>();

function notificationStore(client: RealtimeClient): NotificationStore {
  let store = notificationStores.get(client);
  if (!store) notificationStores.set(client, (store = new NotificationStore(client)));
  return store;
}

const NO_SUBSCRIPTION = () => () => {};

export interface NotificationsOptions {
  /** Most items this bell shows (the shared list keeps the largest any bell asks for). */
  max?: number;
  /**
   * The list as the server rendered it (from the platform's REST API, say): the first
   * paint shows it, and live notifications go on top of it (one already listed is not
   * added twice). It seeds the client's list once, while nothing else reached it; a bell
   * mounted later finds the live list instead.
   */
  initial?: NotificationsState;
}

/**
 * The bell: `notification.created.v1` events, newest first, from one list per client
 * that every bell shares and navigation keeps. Selects `notification.#` while mounted.
 */
export function useNotifications(options: NotificationsOptions = {}): Notifications {
  const max = options.max ?? DEFAULT_MAX_NOTIFICATIONS;
  const client = useRealtimeClient();
  const resyncCount = useResyncCount();
  const store = client ? notificationStore(client) : null;
  if (store && max > store.keep) store.keep = max;
  // Seeded during the render, so the first paint (and hydration) shows `initial`; the
  // other bells already mounted hear of it after the commit.
  const seeding = options.initial !== undefined;
  if (seeding) store?.seed(options.initial!);
  useEffect(() => {
    // Harmless when the seed was another bell's: a bell whose list did not change does
    // not render again.
    if (seeding) store?.announce();
  }, [seeding, store]);
  const initial = options.initial ?? INITIAL_NOTIFICATIONS;
  const server = useCallback(() => initial, [initial]);
  const state = useSyncExternalStore(
    store?.subscribe ?? NO_SUBSCRIPTION,
    store ? () => store.state : server,
    server,
  );
  const items = useMemo(() => state.items.slice(0, max), [state.items, max]);
  const markAllRead = useCallback(() => store?.markAllRead(), [store]);
  return { items, unread: state.unread, markAllRead, resyncCount };
}
