// The client under the failures production brings: a missing URL, a signed-out token
// endpoint, refused and blocked handshakes, revocation, dead connections, sleeping
// laptops, hostile event data. Each `it` names the behaviour; the ones marked "review"
// failed before their fix.
import { describe, expect, it, vi } from 'vitest';
import { createRealtimeClient, type RealtimeEvent } from '../src/index.js';
import { admitted, envelope, FakeEventSource, FakeFetch, FakeWebSocket, flush, jwt, refusal } from './fakes.js';
import { advance, make, T0, URL_BASE } from './harness.js';

/** Every string reachable through own properties, as a debugger would expand them. */
function reachableStrings(root: unknown): string {
  const seen = new Set<unknown>();
  const out: string[] = [];
  const walk = (v: unknown): void => {
    if (typeof v === 'string') out.push(v);
    if ((typeof v !== 'object' && typeof v !== 'function') || v === null || seen.has(v)) return;
    seen.add(v);
    if (v instanceof Map || v instanceof Set) for (const x of v) walk(x);
    for (const key of Reflect.ownKeys(v)) {
      const d = Object.getOwnPropertyDescriptor(v, key);
      if (d && 'value' in d) walk(d.value);
    }
  };
  walk(root);
  return out.join('\n');
}

const base = { getToken: () => 'tok', WebSocketImpl: FakeWebSocket, EventSourceImpl: FakeEventSource };

describe('fail loudly on a bad url', () => {
  it.each([
    ['undefined', undefined],
    ['empty', ''],
    ['the string "undefined"', 'undefined'],
    ['a relative name', 'realtime.example/ws'],
    ['ftp', 'ftp://rt.example'],
    ['garbage', 'https://'],
  ])('%s throws at construction with a clear message', (_, url) => {
    expect(() => createRealtimeClient({ ...base, url: url as string })).toThrow(/realtime-client: `url`/);
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('names the Next.js build-time cause when the url is missing', () => {
    expect(() => createRealtimeClient({ ...base, url: undefined as unknown as string })).toThrow(/NEXT_PUBLIC_/);
  });

  it('a path on the page origin is accepted only in a browser', () => {
    expect(() => createRealtimeClient({ ...base, url: '/realtime' })).toThrow(/absolute/);
    vi.stubGlobal('location', { href: 'https://studio.example/app' });
    const { client } = make({ url: '/realtime' });
    expect(client.state).toBe('connecting');
  });

  it('needs exactly one of getToken, tokenUrl, cookieAuth', () => {
    const opts = { url: URL_BASE, WebSocketImpl: FakeWebSocket };
    expect(() => createRealtimeClient(opts)).toThrow(/exactly one/);
    expect(() => createRealtimeClient({ ...opts, getToken: () => 't', tokenUrl: '/t' })).toThrow(/exactly one/);
  });
});

describe('review: options are validated', () => {
  it.each([
    ['backoff.initialMs NaN', { backoff: { initialMs: NaN } }],
    ['backoff.initialMs 0', { backoff: { initialMs: 0 } }],
    ['backoff.maxMs 0', { backoff: { maxMs: 0 } }],
    ['backoff.maxMs below initial', { backoff: { initialMs: 5000, maxMs: 10 } }],
    ['connectTimeoutMs Infinity', { connectTimeoutMs: Infinity }],
    ['healthyAfterMs -1', { healthyAfterMs: -1 }],
    ['pingIntervalMs NaN', { pingIntervalMs: NaN }],
    ['fallbackAfter 0.5', { fallbackAfter: 0.5 }],
    ['dedupeWindow 0', { dedupeWindow: 0 }],
    ['refreshBeforeExpiryMs a string', { refreshBeforeExpiryMs: '60' as unknown as number }],
  ])('%s throws', (_, opts) => {
    expect(() => createRealtimeClient({ ...base, url: URL_BASE, ...opts })).toThrow(/realtime-client: /);
  });
});

describe('a failing token source', () => {
  it('a throwing getToken: unauthorized, reported, retried with growing backoff', async () => {
    const getToken = vi.fn(async (): Promise<string> => {
      throw new Error('signed out');
    });
    const { client, errors, states } = make({ getToken });
    await flush();
    expect(client.state).toBe('unauthorized');
    expect(errors.map((e) => [e.code, e.message])).toEqual([['token_error', 'signed out']]);
    await advance(500);
    expect(getToken).toHaveBeenCalledTimes(2);
    await advance(999); // second wait: 0.5 * 2 s
    expect(getToken).toHaveBeenCalledTimes(2);
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(states).toEqual(['unauthorized']);
  });

  it('tokenUrl answering 401 never sends its body as a token, and recovers when signed in', async () => {
    const fetch = new FakeFetch().answer(
      new Response('{"error":"signed_out"}', { status: 401, headers: { 'content-type': 'application/json' } }),
      new Response('{"error":"signed_out"}', { status: 401 }),
      new Response('fresh.jwt.token', { status: 200, headers: { 'content-type': 'text/plain' } }),
    );
    const { client, errors } = make({ tokenUrl: 'https://studio.example/api/realtime-token' }, fetch);
    await flush();
    expect(client.state).toBe('unauthorized');
    expect(errors[0]).toMatchObject({ code: 'token_error', status: 401 });
    await advance(500);
    expect(errors.map((e) => e.status)).toEqual([401, 401]);
    expect(FakeWebSocket.instances).toHaveLength(0);
    await advance(1_000);
    expect(FakeWebSocket.last().bearer).toBe('fresh.jwt.token');
    expect(fetch.calls[0]!.init).toMatchObject({ credentials: 'same-origin', cache: 'no-store' });
    FakeWebSocket.last().open();
    expect(client.state).toBe('open');
  });

  it('tokenUrl may answer JSON {"token": ...}', async () => {
    const fetch = new FakeFetch().answer(Response.json({ token: 'json.jwt.token' }));
    make({ tokenUrl: 'https://studio.example/t' }, fetch);
    await flush();
    expect(FakeWebSocket.last().bearer).toBe('json.jwt.token');
  });

  it.each([
    ['a JSON error body', '{"error":"unauthorized"}'],
    ['an HTML page', '<!doctype html><title>Sign in</title>'],
    ['a Response object', new Response('x')],
  ])('getToken returning %s is refused, not sent', async (_, value) => {
    const { client, errors } = make({ getToken: async () => value as string });
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['token_error']);
    expect(errors[0]!.message).not.toContain('unauthorized');
    expect(client.state).toBe('unauthorized');
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('review: a getToken that never settles is abandoned after connectTimeoutMs and retried', async () => {
    const getToken = vi.fn(() => new Promise<string>(() => {}));
    const { client, errors } = make({ getToken, connectTimeoutMs: 3_000 });
    await advance(2_999);
    expect(errors).toEqual([]);
    await advance(1);
    expect(errors.map((e) => e.code)).toEqual(['token_error']);
    expect(client.state).toBe('unauthorized');
    await advance(500);
    expect(getToken).toHaveBeenCalledTimes(2);
  });
});

describe('token out of URLs', () => {
  it('the WebSocket URL carries no token; it rides in Sec-WebSocket-Protocol', async () => {
    make({ getToken: async () => 'header.payload.sig', lastEventId: 'e1' });
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.url).toBe('wss://rt.flatrender.example/ws?last_event_id=e1');
    expect(ws.protocols).toEqual(['realtime-gateway.v1', 'bearer.header.payload.sig']);
  });

  it('a handshake that selected no subprotocol is not trusted', async () => {
    const { client, errors } = make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.readyState = 1;
    ws.onopen?.({} as Event); // "opened" without selecting realtime-gateway.v1
    expect(client.state).not.toBe('open');
    expect(ws.closedByClient).toBe(1000);
    expect(errors[0]).toMatchObject({ code: 'connect_failed' });
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('a token in protocol form must fit a header token', async () => {
    const { errors } = make({ getToken: async () => 'abc/def==' });
    await flush();
    expect(errors[0]!.message).toMatch(/tokenTransport "query"/);
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('review: refuses to send a token over plain http except to this machine', async () => {
    const { client, errors } = make({ url: 'http://rt.example.com' });
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['insecure_url']);
    expect(client.state).toBe('closed');
    expect(FakeWebSocket.instances).toHaveLength(0);

    for (const url of ['http://localhost:8080', 'http://127.0.0.1:9', 'ws://[::1]:1', 'http://studio.localhost']) {
      make({ url });
      await flush();
    }
    expect(FakeWebSocket.instances).toHaveLength(4);
    // Cookie auth sends no token: plain http is the app's own business.
    make({ url: 'http://rt.example.com', getToken: async () => null });
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(5);
  });

  it('review: the token is not visible on the client object', async () => {
    const secret = 'very.secret.token';
    const { client } = make({ getToken: async () => secret });
    await flush();
    FakeWebSocket.last().open();
    expect(JSON.stringify(client)).not.toContain(secret);
    // What DevTools or a console dump shows: every own field (the injected fake
    // constructors aside: the fake keeps its instances for the tests).
    const fields = Object.entries(client).filter(([k]) => k !== 'WS' && k !== 'ES');
    expect(reachableStrings(Object.fromEntries(fields))).not.toContain(secret);
  });
});

describe('knowing why a connection failed (GET /auth/check)', () => {
  it('asks with the same token in a header, never in the URL', async () => {
    const fetch = new FakeFetch(admitted);
    make({ url: 'https://rt.flatrender.example/prefix/' }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    const [probe] = fetch.probes();
    expect(probe!.url).toBe('https://rt.flatrender.example/prefix/auth/check');
    expect(probe!.init?.headers).toEqual({ authorization: 'Bearer tok' });
    expect(probe!.init?.credentials).toBe('omit');
  });

  it('401: reports unauthorized with the reason and retries with a fresh token, staying on WebSocket', async () => {
    const fetch = new FakeFetch(() => refusal(401, 'unauthorized', 'expired'));
    const { client, errors, getToken } = make({}, fetch);
    await flush();
    for (const wait of [500, 1_000, 2_000]) {
      FakeWebSocket.last().fail();
      await flush();
      expect(client.state).toBe('unauthorized');
      await advance(wait);
    }
    expect(errors.map((e) => [e.code, e.status, e.reason])).toEqual(
      Array(3).fill(['unauthorized', 401, 'expired']),
    );
    // Two timed retries; the third refusal waits for focus or reconnect() (see tabs.test.ts).
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it('401 revoked: state revoked, reported, never retried', async () => {
    const fetch = new FakeFetch(() => refusal(401, 'unauthorized', 'revoked'));
    const { client, errors, states } = make({}, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(client.state).toBe('revoked');
    expect(errors.map((e) => e.code)).toEqual(['revoked']);
    await advance(3_600_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(states.at(-1)).toBe('revoked');
  });

  it.each([
    [429, 'too_many_connections', 'max_connections_per_user'],
    [503, 'over_capacity', 'max_connections'],
    [503, 'draining', 'draining'],
  ])('%i %s honours Retry-After', async (status, error, reason) => {
    const fetch = new FakeFetch(() => refusal(status, error, reason, 7));
    const { errors } = make({}, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(errors[0]).toMatchObject({ code: 'refused', status, reason, retryAfterMs: 7_000 });
    await advance(6_999);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await advance(1);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeEventSource.instances).toHaveLength(0);
  });

  it('a gateway that is down (deploy while the page loads) never moves the tab to SSE', async () => {
    const fetch = new FakeFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    make({ backoff: { initialMs: 1_000, maxMs: 4_000 } }, fetch);
    await flush();
    for (let i = 0; i < 5; i++) {
      FakeWebSocket.last().fail();
      await advance(4_000);
    }
    expect(FakeWebSocket.instances).toHaveLength(6);
    expect(FakeEventSource.instances).toHaveLength(0);
    FakeWebSocket.last().open();
  });

  it('an SSE stream failing while the gateway would admit the token says so (CORS, proxies)', async () => {
    const fetch = new FakeFetch(admitted);
    const { errors } = make({ transport: 'sse' }, fetch);
    await flush();
    FakeEventSource.last().fail(2);
    await flush();
    expect(errors[0]).toMatchObject({ code: 'connect_failed' });
    expect(errors[0]!.message).toMatch(/CORS/);
    await advance(500);
    expect(FakeEventSource.instances).toHaveLength(2);
  });

  it('cookie auth has no token to probe with: behaves as before', async () => {
    const fetch = new FakeFetch(admitted);
    make({ getToken: async () => null }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(fetch.probes()).toHaveLength(0);
  });
});

describe('WebSocket blocked on the path', () => {
  async function blockedThenSse() {
    const fetch = new FakeFetch(admitted); // the gateway would admit us: WebSocket is blocked
    const made = make({ lastEventId: 'saved', wsRetryIntervalMs: 60_000 }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    expect(made.client.transport).toBe('sse');
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 's1'));
    return { ...made, es };
  }

  it('falls back to SSE only after the gateway said it would admit us', async () => {
    const { es } = await blockedThenSse();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(es.query.get('last_event_id')).toBe('saved');
  });

  it('even where WebSocket worked before (the network changed)', async () => {
    const fetch = new FakeFetch(admitted);
    make({}, fetch);
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(1006);
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    FakeWebSocket.last().fail();
    await advance(2_000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('tries WebSocket again later and hands over without a gap when it opens', async () => {
    const { client, es, events } = await blockedThenSse();
    await advance(60_000);
    const trial = FakeWebSocket.last();
    expect(FakeWebSocket.instances).toHaveLength(3);
    expect(trial.query.get('last_event_id')).toBe('s1');
    expect(es.closed).toBe(false); // SSE serves until the trial opens
    trial.open();
    expect(es.closed).toBe(true);
    expect(client.transport).toBe('websocket');
    expect(client.state).toBe('open');
    trial.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 's1')); // seam duplicate
    trial.receive(envelope('render.job.started.v1', { job_id: 'j' }, 'w2'));
    expect(events.map((e) => e.event_id)).toEqual(['s1', 'w2']);
  });

  it('keeps trying WebSocket after the SSE stream was remade', async () => {
    const fetch = new FakeFetch(admitted);
    make({ wsRetryIntervalMs: 60_000 }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    FakeEventSource.last().open();
    FakeEventSource.last().fail(); // reconnects through the backoff, still on SSE
    await advance(4_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    FakeEventSource.last().open();
    const before = FakeWebSocket.instances.length;
    await advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(before + 1);
  });

  it('a failed trial leaves SSE alone and is tried again', async () => {
    const { client, es } = await blockedThenSse();
    await advance(60_000);
    FakeWebSocket.last().fail();
    expect(es.closed).toBe(false);
    expect(client.state).toBe('open');
    expect(client.transport).toBe('sse');
    await advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(4);
  });
});

describe('revocation', () => {
  it('WebSocket close 4003 revoked: state revoked, reported, no reconnect', async () => {
    const { client, errors } = make();
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4003, 'revoked');
    expect(client.state).toBe('revoked');
    expect(errors.map((e) => [e.code, e.reason])).toEqual([['revoked', 'revoked']]);
    await advance(3_600_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    client.reconnect(); // after a new sign-in the app may start again
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('SSE event: close with reason revoked: same', async () => {
    const { client } = make({ transport: 'sse' });
    await flush();
    FakeEventSource.last().open();
    FakeEventSource.last().emit('close', { type: 'close', reason: 'revoked' });
    expect(client.state).toBe('revoked');
    await advance(3_600_000);
    expect(FakeEventSource.instances).toHaveLength(1);
  });
});

describe('review: backoff resets only on events or time open', () => {
  it.each([
    ['resync', { type: 'resync' }],
    ['error', { type: 'error', reason: 'unknown_message' }],
    ['pong', { type: 'pong' }],
  ])('an accept-%s-drop loop still backs off', async (_, control) => {
    const onResync = vi.fn();
    make({ onResync, backoff: { initialMs: 1_000, maxMs: 60_000 } });
    await flush();
    for (const wait of [500, 1_000, 2_000]) {
      const n = FakeWebSocket.instances.length;
      FakeWebSocket.last().open();
      FakeWebSocket.last().receive(control);
      FakeWebSocket.last().serverClose(4000, 'slow client');
      await advance(wait - 1);
      expect(FakeWebSocket.instances).toHaveLength(n);
      await advance(1);
      expect(FakeWebSocket.instances).toHaveLength(n + 1);
    }
  });

  it('SSE close messages do not reset it either', async () => {
    make({ transport: 'sse' });
    await flush();
    for (const wait of [500, 1_000, 2_000]) {
      const n = FakeEventSource.instances.length;
      FakeEventSource.last().open();
      FakeEventSource.last().emit('close', { type: 'close', reason: 'shutdown' });
      await advance(wait - 1);
      expect(FakeEventSource.instances).toHaveLength(n);
      await advance(1);
    }
  });
});

describe('refresh sensibly', () => {
  const now = T0 / 1000;

  it('a 60-second token with the default margin refreshes at half its life, not every 5 s', async () => {
    // Each token is issued when asked for and lives 60 s; the fake gateway confirms each refresh.
    let exp = 0;
    const getToken = vi.fn(async () => {
      const iat = Math.floor(Date.now() / 1000);
      exp = iat + 60;
      return jwt({ iat, exp });
    });
    make({ getToken });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    let confirmed = 0;
    for (let t = 0; t < 120; t++) {
      await advance(1_000);
      if (ws.sent.length > confirmed) {
        confirmed = ws.sent.length;
        ws.receive({ type: 'refreshed', exp });
      }
    }
    // One refresh every 30 s: 4 in two minutes (the old schedule did 24).
    expect(ws.sent.filter((m) => (m as { type: string }).type === 'refresh')).toHaveLength(4);
  });

  it('review: a token living beyond the 32-bit timer range does not loop', async () => {
    const long = jwt({ iat: now, exp: now + 46 * 86_400 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(long).mockResolvedValue('next');
    make({ getToken });
    await flush();
    FakeWebSocket.last().open();
    await advance(60_000);
    expect(getToken).toHaveBeenCalledTimes(1);
    // Still refreshed when due (80 % of 46 days), through re-armed capped timers.
    await vi.advanceTimersByTimeAsync(0.8 * 46 * 86_400_000);
    await flush();
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it('review: an exp in milliseconds does not loop', async () => {
    const getToken = vi.fn(async () => jwt({ exp: T0 + 3_600_000 }));
    make({ getToken });
    await flush();
    FakeWebSocket.last().open();
    await advance(600_000);
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it('review: an SSE refresh opens one new stream, never a loop, even if it fails', async () => {
    const first = jwt({ iat: now, exp: now + 600 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue(jwt({ iat: now + 480, exp: now + 1080 }));
    make({ transport: 'sse', getToken, random: () => 0.9 });
    await flush();
    FakeEventSource.last().open();
    await advance(480_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    FakeEventSource.last().fail(); // the new stream fails: the old one serves on
    await advance(60_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(FakeEventSource.instances[0]!.closed).toBe(false);
  });
});

describe('review: liveness', () => {
  it('SSE: a stream silent for sseHeartbeatTimeoutMs is dropped and resumed', async () => {
    make({ transport: 'sse', sseHeartbeatTimeoutMs: 30_000 });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'h1'));
    // Heartbeats keep it alive.
    for (let i = 0; i < 6; i++) {
      await advance(10_000);
      es.emit('heartbeat', {});
    }
    expect(es.closed).toBe(false);
    // Then nothing: the network went away without telling anyone.
    await advance(45_000);
    expect(es.closed).toBe(true);
    await advance(500);
    expect(FakeEventSource.last().query.get('last_event_id')).toBe('h1');
  });

  it('SSE watchdog is on by default at 37.5 s (2.5 x the gateway heartbeat)', async () => {
    make({ transport: 'sse', sseHeartbeatTimeoutMs: undefined });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    await advance(37_000);
    expect(es.closed).toBe(false);
    await advance(20_000);
    expect(es.closed).toBe(true);
  });

  it('a heartbeat is not an event', async () => {
    const { events } = make({ transport: 'sse' });
    await flush();
    FakeEventSource.last().open();
    FakeEventSource.last().emit('heartbeat', {});
    expect(events).toEqual([]);
  });
});

describe('reconnect on wake', () => {
  function page() {
    const win = new EventTarget();
    const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
    const setVisible = (visible: boolean) => {
      doc.visibilityState = visible ? 'visible' : 'hidden';
      doc.dispatchEvent(new Event('visibilitychange'));
    };
    return { lifecycle: { window: win, document: doc }, win, setVisible };
  }

  it('online: connects at once instead of waiting out the backoff, resuming', async () => {
    const p = page();
    make({ lifecycle: p.lifecycle, backoff: { initialMs: 30_000, maxMs: 60_000 } });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'o1'));
    ws.serverClose(1006);
    await advance(2_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    p.win.dispatchEvent(new Event('online'));
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last().query.get('last_event_id')).toBe('o1');
  });

  it('visible after a long hide: asks the connection (a ping) and reconnects if it is dead; after a short one: nothing', async () => {
    const p = page();
    const { client } = make({ lifecycle: p.lifecycle, resumeAfterHiddenMs: 60_000 });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    p.setVisible(false);
    await advance(10_000);
    p.setVisible(true);
    await flush();
    expect(ws.sent).toEqual([]);

    p.setVisible(false);
    await advance(60_000);
    p.setVisible(true);
    await flush();
    expect(ws.sent).toEqual([{ type: 'ping' }]);
    await advance(10_000); // no answer within pongTimeoutMs
    expect(ws.closedByClient).toBe(1000);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last().open();
    expect(client.state).toBe('open');
  });

  it('a timer firing far too late (the machine slept) pings, and drops a socket that does not answer', async () => {
    let clock = T0;
    make({ pingIntervalMs: 20_000, now: () => clock });
    await flush();
    FakeWebSocket.last().open();
    clock += 3_600_000; // an hour asleep; the interval fires once on wake
    await advance(20_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    await advance(10_000);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('close() stops listening', async () => {
    const p = page();
    const { client } = make({ lifecycle: p.lifecycle });
    await flush();
    client.close();
    p.win.dispatchEvent(new Event('online'));
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe('review: event data is checked before typed listeners see it', () => {
  it('data: null reaches onEvent but never on(), onJob() or onNotification()', async () => {
    const { client, events, errors } = make();
    await flush();
    const typed = vi.fn();
    client.on('render.job.progress.v1', typed);
    client.onJob('j', typed);
    client.onNotification(typed);
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive({ ...envelope('render.job.progress.v1', {}), data: null });
    ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: '50' }));
    ws.receive({ ...envelope('notification.created.v1', {}), data: null });
    expect(typed).not.toHaveBeenCalled();
    expect(events).toHaveLength(3);
    expect(errors.map((e) => e.code)).toEqual(['invalid_event', 'invalid_event', 'invalid_event']);
    ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 50 }));
    expect(typed).toHaveBeenCalledTimes(2); // on() and onJob()
  });

  it('unknown event types pass untouched and are not reported', async () => {
    const { events, errors } = make();
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().receive({ ...envelope('billing.invoice.paid.v1', {}), data: null });
    expect((events[0] as RealtimeEvent).data).toBeNull();
    expect(errors).toEqual([]);
  });
});
