/**
 * The client under fake timers with fake transports: `make()` builds one (closed after
 * each test), `advance()` moves time and lets async work settle.
 */
import { afterEach, beforeEach, vi } from 'vitest';
import {
  createRealtimeClient,
  type ConnectionState,
  type RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeError,
  type RealtimeEvent,
} from '../src/index.js';
import { FakeEventSource, FakeFetch, FakeWebSocket, flush } from './fakes.js';

export const URL_BASE = 'https://rt.flatrender.example';
export const T0 = Date.UTC(2025, 0, 1); // fixed wall clock under fake timers
const clients: RealtimeClient[] = [];

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(T0);
  FakeWebSocket.reset();
  FakeEventSource.reset();
});

afterEach(() => {
  for (const c of clients.splice(0)) c.close();
  vi.useRealTimers();
  vi.unstubAllGlobals();
});

/**
 * `fetch` answers the refusal probe (404 by default: an older gateway) and any token URL.
 * `listen: false` leaves out the test's own `onEvent` listener, which selects everything.
 */
export function make(opts: Partial<RealtimeClientOptions> = {}, fetch = new FakeFetch(), { listen = true } = {}) {
  const getToken = vi.fn<() => Promise<string | null>>(async () => 'tok');
  const states: ConnectionState[] = [];
  const errors: RealtimeError[] = [];
  const ownAuth = opts.tokenUrl !== undefined || opts.cookieAuth !== undefined;
  const client = createRealtimeClient({
    url: URL_BASE,
    ...(ownAuth ? {} : { getToken }),
    WebSocketImpl: FakeWebSocket,
    EventSourceImpl: FakeEventSource,
    fetchImpl: fetch.fetch,
    random: () => 0.5,
    // Liveness checks have their own tests; here they would drop fakes that never pong.
    pingIntervalMs: 0,
    // SSE through the FakeEventSource these tests drive; SSE over fetch (the default in
    // browsers) has its own tests in tabs.test.ts.
    sseFetch: false,
    sseHeartbeatTimeoutMs: 0,
    onStateChange: (s) => states.push(s),
    onError: (e) => errors.push(e),
    ...opts,
  });
  clients.push(client);
  const events: RealtimeEvent[] = [];
  if (listen) client.onEvent((e) => events.push(e));
  return { client, getToken: (opts.getToken as typeof getToken | undefined) ?? getToken, events, states, errors, fetch };
}

/** Advance fake time and let the async getToken() of any attempt that fired settle. */
export async function advance(ms: number): Promise<void> {
  await vi.advanceTimersByTimeAsync(ms);
  await flush();
}

