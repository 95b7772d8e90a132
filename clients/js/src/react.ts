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
  useRef,
  useState,
  useSyncExternalStore,
  type ReactElement,
  type ReactNode,
} from 'react';
import {
  createRealtimeClient,
  type ConnectionState,
  type RealtimeClient,
  type RealtimeClientOptions,
} from './client.js';
import type { NotificationCreated, RenderJobEvent } from './events.js';

// undefined = no provider at all (a bug); null = provider still creating its client.
const RealtimeContext = createContext<RealtimeClient | null | undefined>(undefined);

export interface RealtimeProviderProps {
  /** A client you own: you create it and you close it. */
  client?: RealtimeClient | null;
  /**
   * Or options: the provider creates the client after mount (never during server
   * rendering) and closes it on unmount. A new client is made only when `url` or
   * `transport` changes; `getToken` and the callbacks are always called in their
   * latest version, so inline functions are fine.
   */
  options?: RealtimeClientOptions;
  children?: ReactNode;
}

export function RealtimeProvider({ client, options, children }: RealtimeProviderProps): ReactElement {
  const latest = useRef(options);
  useEffect(() => {
    latest.current = options;
  });
  const owns = client === undefined && options !== undefined;
  const [owned, setOwned] = useState<RealtimeClient | null>(null);
  const url = options?.url;
  const transport = options?.transport;

  useEffect(() => {
    if (!owns) return;
    const opts = () => latest.current!;
    // Created in an effect (not useState) so React StrictMode's mount/unmount/mount closes
    // the first client cleanly instead of leaking or reusing a closed one.
    const c = createRealtimeClient({
      ...opts(),
      getToken: () => opts().getToken(),
      onResync: () => opts().onResync?.(),
      onStateChange: (s) => opts().onStateChange?.(s),
      onError: (e) => opts().onError?.(e),
    });
    setOwned(c);
    return () => {
      c.close();
      setOwned(null);
    };
  }, [owns, url, transport]);

  return createElement(RealtimeContext.Provider, { value: client !== undefined ? client : owned }, children);
}

/** The provider's client; null while the provider is still creating it. Throws outside a provider. */
export function useRealtimeClient(): RealtimeClient | null {
  const client = useContext(RealtimeContext);
  if (client === undefined) throw new Error('realtime-client: hook used outside <RealtimeProvider>');
  return client;
}

/** Connection state; 'connecting' until the provider has a client (and during SSR). */
export function useConnectionState(): ConnectionState {
  const client = useRealtimeClient();
  const subscribe = useCallback((notify: () => void) => (client ? client.onStateChange(notify) : () => {}), [client]);
  return useSyncExternalStore(
    subscribe,
    () => client?.state ?? 'connecting',
    () => 'connecting',
  );
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

// ---- render progress ---------------------------------------------------------------

export type RenderStatus = 'unknown' | 'queued' | 'started' | 'progress' | 'completed' | 'failed' | 'cancelled';

export interface RenderProgressState {
  status: RenderStatus;
  /** 0–100. */
  progress: number;
  frame?: number;
  totalFrames?: number;
  outputUrl?: string;
  error?: string;
}

export interface RenderProgress extends RenderProgressState {
  /** Increments on each resync: refetch the job over REST when it changes. */
  resyncCount: number;
}

export const INITIAL_RENDER_PROGRESS: RenderProgressState = { status: 'unknown', progress: 0 };

/**
 * Applies one render.job.* event. Events arrive in order, so the latest one wins (a
 * re-queued job goes back to 'queued'). Exported so apps can fold REST state and events
 * the same way.
 */
export function reduceRenderProgress(prev: RenderProgressState, event: RenderJobEvent): RenderProgressState {
  switch (event.event_type) {
    case 'render.job.queued.v1':
      return { status: 'queued', progress: 0 };
    case 'render.job.started.v1':
      return { ...prev, status: 'started' };
    case 'render.job.progress.v1': {
      const { progress, frame, total_frames } = event.data;
      return {
        ...prev,
        status: 'progress',
        progress: typeof progress === 'number' && Number.isFinite(progress) ? Math.min(100, Math.max(0, progress)) : prev.progress,
        ...(typeof frame === 'number' ? { frame } : {}),
        ...(typeof total_frames === 'number' ? { totalFrames: total_frames } : {}),
      };
    }
    case 'render.job.completed.v1': {
      const { output_url } = event.data;
      return { ...prev, status: 'completed', progress: 100, ...(typeof output_url === 'string' ? { outputUrl: output_url } : {}) };
    }
    case 'render.job.failed.v1': {
      const error = event.data.error ?? event.data.reason;
      return { ...prev, status: 'failed', ...(typeof error === 'string' ? { error } : {}) };
    }
    case 'render.job.cancelled.v1':
      return { ...prev, status: 'cancelled' };
  }
}

/** Live progress of one render job; starts from 'unknown' and resets when `jobId` changes. */
export function useRenderProgress(jobId: string | null | undefined): RenderProgress {
  const client = useRealtimeClient();
  const resyncCount = useResyncCount();
  // Keyed by job so a jobId change shows INITIAL at once instead of the old job's state.
  const [slot, setSlot] = useState<{ jobId: string | null | undefined; state: RenderProgressState }>({
    jobId,
    state: INITIAL_RENDER_PROGRESS,
  });
  useEffect(() => {
    if (!client || !jobId) return;
    return client.onJob(jobId, (event) =>
      setSlot((prev) => ({
        jobId,
        state: reduceRenderProgress(prev.jobId === jobId ? prev.state : INITIAL_RENDER_PROGRESS, event),
      })),
    );
  }, [client, jobId]);
  const state = slot.jobId === jobId ? slot.state : INITIAL_RENDER_PROGRESS;
  return { ...state, resyncCount };
}

// ---- notifications -------------------------------------------------------------------

export interface Notifications {
  /** notification.created.v1 events received since mount, newest first. */
  items: NotificationCreated[];
  /** How many arrived since mount or the last markAllRead(). */
  unread: number;
  markAllRead: () => void;
  /** Increments on each resync: refetch the notification list when it changes. */
  resyncCount: number;
}

export function useNotifications(options: { max?: number } = {}): Notifications {
  const max = options.max ?? 50;
  const client = useRealtimeClient();
  const resyncCount = useResyncCount();
  const [state, setState] = useState<{ items: NotificationCreated[]; unread: number }>({ items: [], unread: 0 });
  useEffect(() => {
    if (!client) return;
    return client.on('notification.created.v1', (event) =>
      setState((prev) => ({ items: [event, ...prev.items].slice(0, max), unread: prev.unread + 1 })),
    );
  }, [client, max]);
  const markAllRead = useCallback(() => setState((prev) => (prev.unread === 0 ? prev : { ...prev, unread: 0 })), []);
  return { items: state.items, unread: state.unread, markAllRead, resyncCount };
}
