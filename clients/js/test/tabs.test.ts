// The client in real tabs (issue 26): background tabs whose timers Chrome throttles, pages
// that stay signed out, errors that clear, selection changes without a gap. Each `describe`
// names the finding it reproduces; every test here failed on the client before its fix.
import { describe, expect, it, vi } from 'vitest';
import { createRealtimeClient } from '../src/index.js';
import { admitted, envelope, FakeEventSource, FakeFetch, FakeWebSocket, flush, jwt, refusal, sseStream } from './fakes.js';
import { advance, make, T0, URL_BASE } from './harness.js';

const nowSecs = T0 / 1000;

/** A page whose visibility and focus the test drives. */
export function page() {
  const win = new EventTarget();
  const doc = Object.assign(new EventTarget(), { visibilityState: 'visible' });
  const setVisible = (visible: boolean) => {
    doc.visibilityState = visible ? 'visible' : 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
  };
  return { lifecycle: { window: win, document: doc }, win, setVisible };
}

/** A gateway that answers every ping at once, as a healthy one does. */
class AnsweringWebSocket extends FakeWebSocket {
  override send(data: string): void {
    super.send(data);
    if ((JSON.parse(data) as { type?: string }).type === 'ping') this.receive({ type: 'pong' });
  }
}

describe('issue 26 #1: a healthy connection in a hidden tab stays up', () => {
  it('a late liveness tick sends a ping and keeps a socket that answers', async () => {
    const { getToken } = make({ pingIntervalMs: 20_000, WebSocketImpl: AnsweringWebSocket });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    // Ten minutes hidden. Chrome runs the 20 s ping interval about once a minute: each
    // tick sees a minute pass on the wall clock since the one before.
    for (let i = 0; i < 10; i++) {
      vi.setSystemTime(Date.now() + 40_000); // plus the 20 s the fake timers move: 60 s between ticks
      await advance(20_000);
    }
    expect(ws.sent.length).toBeGreaterThanOrEqual(10);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(ws.closedByClient).toBeUndefined();
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it('a late tick with no answer to its ping drops the socket and reconnects', async () => {
    const clock = { t: T0 };
    make({ pingIntervalMs: 20_000, pongTimeoutMs: 5_000, now: () => clock.t });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    clock.t += 3_600_000; // an hour asleep
    await advance(20_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(ws.sent).toContainEqual({ type: 'ping' });
    await advance(5_000);
    expect(ws.closedByClient).toBe(1000);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('SSE: a late tick waits for the next heartbeat before judging the stream', async () => {
    const clock = { t: T0 };
    make({ transport: 'sse', sseHeartbeatTimeoutMs: 37_500, now: () => clock.t });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    clock.t += 600_000;
    await advance(18_750); // the watchdog tick, ten minutes late: no heartbeat heard for ten minutes
    es.emit('heartbeat', {}); // the stream is alive: its heartbeat arrives
    await advance(20_000);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(es.closed).toBe(false);
  });

  it('shown again after a long hide: a ping, not a reconnect', async () => {
    const p = page();
    const { client, getToken } = make({ lifecycle: p.lifecycle, pingIntervalMs: 0 });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    p.setVisible(false);
    await advance(600_000);
    p.setVisible(true);
    await flush();
    expect(ws.sent).toEqual([{ type: 'ping' }]);
    ws.receive({ type: 'pong' });
    await advance(15_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe('open');
    expect(getToken).toHaveBeenCalledTimes(1);
  });

  it('shown again with a dead socket: the unanswered ping drops it', async () => {
    const p = page();
    make({ lifecycle: p.lifecycle, pingIntervalMs: 0, pongTimeoutMs: 10_000 });
    await flush();
    FakeWebSocket.last().open();
    p.setVisible(false);
    await advance(120_000);
    p.setVisible(true);
    await advance(10_000);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });
});

describe('issue 26 #1: a token is reused until near its expiry', () => {
  it('a reconnect after a drop reuses the token; after 4001 it fetches a new one', async () => {
    const token = jwt({ iat: nowSecs, exp: nowSecs + 3600 });
    const getToken = vi.fn(async () => token);
    make({ getToken });
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(1001, 'server shutting down');
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last().bearer).toBe(token);
    expect(getToken).toHaveBeenCalledTimes(1);
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4001, 'token expired');
    await advance(1_000);
    expect(getToken).toHaveBeenCalledTimes(2);
  });

  it('a token close to its refresh time is fetched again', async () => {
    const first = jwt({ iat: nowSecs, exp: nowSecs + 600 });
    const getToken = vi.fn(async () => first);
    make({ getToken, healthyAfterMs: 1_000 });
    await flush();
    FakeWebSocket.last().open();
    await advance(476_000); // 80 % of the lifetime is at 480 s: the refresh is 4 s away
    FakeWebSocket.last().serverClose(1006);
    await advance(1_000);
    expect(getToken).toHaveBeenCalledTimes(2);
  });
});

describe('issue 26 #1 and #7: SSE refreshes without dropping the stream', () => {
  it('a refresh opens the new stream beside the old, which closes only once the new one is open', async () => {
    const first = jwt({ iat: nowSecs, exp: nowSecs + 600 });
    const second = jwt({ iat: nowSecs + 480, exp: nowSecs + 1080 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue(second);
    const { client, events, states } = make({ transport: "sse", getToken });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 5 }, 'p1'));
    await advance(480_000);
    expect(FakeEventSource.instances).toHaveLength(2);
    const es2 = FakeEventSource.last();
    expect(es.closed).toBe(false);
    expect(es2.query.get('access_token')).toBe(second);
    // The old stream still serves: the new one needs no resume (and so no resync risk).
    expect(es2.query.get('last_event_id')).toBeNull();
    es.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 6 }, 'p2'));
    es2.open();
    expect(es.closed).toBe(true);
    es2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 6 }, 'p2'));
    es2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 7 }, 'p3'));
    expect(events.map((e) => e.event_id)).toEqual(['p1', 'p2', 'p3']);
    expect(states).toEqual(['open']);
    expect(client.state).toBe('open');
    expect(getToken).toHaveBeenCalledTimes(2);
  });
});

describe('issue 26 #3: a signed-out page does not poll the token endpoint', () => {
  const signedOut = () => new FakeFetch(() => Response.json({ error: 'signed_out' }, { status: 401 }));

  it('after a few 401s the client waits for focus, visibility, online or reconnect()', async () => {
    const p = page();
    const fetch = signedOut();
    const { client, errors } = make({ tokenUrl: '/api/realtime-token', url: URL_BASE, lifecycle: p.lifecycle }, fetch);
    await advance(600_000); // ten minutes
    const asked = () => fetch.calls.filter((c) => c.url.endsWith('/api/realtime-token')).length;
    expect(asked()).toBe(3);
    expect(client.state).toBe('unauthorized');
    expect(errors.at(-1)).toMatchObject({ code: 'token_error', status: 401 });
    expect(FakeWebSocket.instances).toHaveLength(0);

    p.win.dispatchEvent(new Event('focus')); // the user came back, perhaps signed in elsewhere
    await flush();
    expect(asked()).toBe(4);
    await advance(600_000);
    expect(asked()).toBe(4);

    client.reconnect();
    await flush();
    expect(asked()).toBe(5);
  });

  it('the gateway refusing the token (401) backs off the same way', async () => {
    const fetch = new FakeFetch(() => refusal(401, 'unauthorized', 'expired'));
    const { client } = make({}, fetch);
    await flush();
    for (let i = 0; i < 20; i++) {
      FakeWebSocket.last().fail();
      await advance(60_000);
    }
    expect(fetch.probes().length).toBeLessThanOrEqual(3);
    expect(client.state).toBe('unauthorized');
  });
});

describe('issue 26 #3: disconnect() keeps listeners and selection', () => {
  it('stops connecting until reconnect(), then delivers to the same listeners', async () => {
    const { client, events, states } = make();
    const off = client.onJob('j', () => {});
    await flush();
    FakeWebSocket.last().open();
    client.disconnect();
    expect(client.state).toBe('disconnected');
    expect(FakeWebSocket.last().closedByClient).toBe(1000);
    await advance(600_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    client.reconnect();
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last().open();
    FakeWebSocket.last().receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'd1'));
    expect(events.map((e) => e.event_id)).toEqual(['d1']);
    expect(states).toEqual(['open', 'disconnected', 'connecting', 'open']);
    off();
  });

  it('a wake while disconnected does nothing', async () => {
    const p = page();
    const { client } = make({ lifecycle: p.lifecycle });
    await flush();
    client.disconnect();
    p.win.dispatchEvent(new Event('online'));
    p.win.dispatchEvent(new Event('focus'));
    p.setVisible(false);
    await advance(120_000);
    p.setVisible(true);
    await advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe('disconnected');
  });
});

describe('issue 26 #2: errors carry a severity and clear when the cause is gone', () => {
  it('a warning (invalid_event, refresh_failed) is reported but is never the current error', async () => {
    const { client, errors } = make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 'half' }, 'bad'));
    ws.receive({ type: 'error', reason: 'refresh_signature' });
    expect(errors.map((e) => [e.code, e.severity])).toEqual([
      ['invalid_event', 'warning'],
      ['refresh_failed', 'warning'],
    ]);
    expect(client.error).toBeNull();
    expect(client.status).toMatchObject({ state: 'open', error: null });
  });

  it('a retrying error is current until a connection opens; a fatal one until reconnect()', async () => {
    const getToken = vi.fn<() => Promise<string>>().mockRejectedValueOnce(new Error('offline')).mockResolvedValue('tok');
    const { client } = make({ getToken });
    await flush();
    expect(client.error).toMatchObject({ code: 'token_error', severity: 'retrying' });
    await advance(500);
    FakeWebSocket.last().open();
    expect(client.error).toBeNull();
    FakeWebSocket.last().serverClose(4003, 'revoked');
    expect(client.error).toMatchObject({ code: 'revoked', severity: 'fatal' });
    client.reconnect();
    expect(client.error).toBeNull();
  });
});

describe('issue 26 #4: an unreachable gateway is reported with the URL tried', () => {
  it('a network error on the attempt and its probe: unreachable, retrying, with the URL', async () => {
    const fetch = new FakeFetch(() => Promise.reject(new TypeError('Failed to fetch')));
    const { client, errors } = make({ url: 'https://rt.flatrender.exmaple' }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(client.state).toBe('reconnecting');
    expect(errors).toHaveLength(1);
    expect(errors[0]).toMatchObject({ code: 'unreachable', severity: 'retrying', url: 'wss://rt.flatrender.exmaple/ws' });
    expect(errors[0]!.message).toContain('rt.flatrender.exmaple');
    expect(client.error?.code).toBe('unreachable');
    await advance(1_000);
    FakeWebSocket.last().open();
    expect(client.error).toBeNull();
  });

  it('the URL never carries the token, even with tokenTransport "query"', async () => {
    const fetch = new FakeFetch(() => new Response('bad gateway', { status: 502 }));
    const { errors } = make({ tokenTransport: 'query', lastEventId: 'e1' }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(errors[0]).toMatchObject({ code: 'unreachable' });
    expect(errors[0]!.url).toBe('wss://rt.flatrender.example/ws?last_event_id=e1');
  });

  it('without a probe, a failed attempt still says which URL failed', async () => {
    const { errors } = make({ probe: false });
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(errors[0]).toMatchObject({ code: 'connect_failed', url: 'wss://rt.flatrender.example/ws' });
  });
});

describe('issue 26 #5: the SSE token leaves no trace in URLs; cookie auth is probed', () => {
  const streamCalls = (fetch: FakeFetch) => fetch.calls.filter((c) => new URL(c.url).pathname === '/sse');

  it('SSE over fetch: the token rides in Authorization, the URL has none, events flow', async () => {
    const stream = sseStream();
    const fetch = new FakeFetch().answer(stream.response);
    const { client, events } = make({ transport: 'sse', sseFetch: true, lastEventId: 'e0' }, fetch);
    await flush();
    expect(FakeEventSource.instances).toHaveLength(0);
    const [call] = streamCalls(fetch);
    expect(call!.url).not.toContain('access_token');
    expect(new URL(call!.url).searchParams.get('last_event_id')).toBe('e0');
    expect(call!.init?.headers).toMatchObject({ authorization: 'Bearer tok' });
    expect(call!.init?.credentials).toBe('omit');
    stream.write('retry: 2000\n: connected\n\n');
    await flush();
    expect(client.state).toBe('open');
    const e = envelope('render.job.queued.v1', { job_id: 'j' }, 'e1');
    stream.write(`id: e1\ndata: ${JSON.stringify(e)}\n\nevent: heartbeat\ndata: {}\n\nevent: resync\ndata: {"type":"resync"}\n\n`);
    await flush();
    expect(events.map((x) => x.event_id)).toEqual(['e1']);
    expect(client.lastEventId).toBe('e1');
  });

  it('a refused stream is explained by its own answer: no probe, and a 401 is unauthorized', async () => {
    const fetch = new FakeFetch().answer(refusal(401, 'unauthorized', 'expired'));
    const { client, errors } = make({ transport: 'sse', sseFetch: true }, fetch);
    await flush();
    expect(fetch.probes()).toHaveLength(0);
    expect(errors[0]).toMatchObject({ code: 'unauthorized', status: 401, reason: 'expired' });
    expect(client.state).toBe('unauthorized');
  });

  it('cookie auth over SSE: credentials included, a 401 (signed out) is reported, not silent', async () => {
    const fetch = new FakeFetch(() => refusal(401, 'unauthorized', 'missing'));
    const { client, errors } = make({ cookieAuth: true, transport: 'sse', sseFetch: true }, fetch);
    await flush();
    const [call] = streamCalls(fetch);
    expect(call!.init?.credentials).toBe('include');
    expect(call!.init?.headers).not.toHaveProperty('authorization');
    expect(errors[0]).toMatchObject({ code: 'unauthorized', reason: 'missing' });
    expect(client.state).toBe('unauthorized');
  });

  it('cookie auth over WebSocket: a failed handshake is probed on /sse with the cookie', async () => {
    const fetch = new FakeFetch(() => refusal(401, 'unauthorized', 'missing'));
    const { client, errors } = make({ cookieAuth: true }, fetch);
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    const [probe] = streamCalls(fetch);
    expect(probe!.init?.credentials).toBe('include');
    expect(errors[0]).toMatchObject({ code: 'unauthorized', reason: 'missing' });
    expect(client.state).toBe('unauthorized');
    // Signed out: it does not fall back to SSE either.
    expect(FakeEventSource.instances).toHaveLength(0);
  });
});

describe('issue 26 #5: a cookie page on an origin the gateway does not list', () => {
  it('says so, instead of calling the gateway unreachable', async () => {
    const fetch = new FakeFetch((): Response | Promise<Response> => refusal(401, 'unauthorized', 'malformed'));
    // The credentialed /sse request fails CORS (a TypeError); /auth/check without credentials answers.
    const real = fetch.fetch;
    const cors = async (input: RequestInfo | URL, init?: RequestInit) => {
      if (init?.credentials === 'include') {
        await real(input, init);
        throw new TypeError('Failed to fetch');
      }
      return real(input, init);
    };
    const { errors } = make({ cookieAuth: true, transport: 'sse', sseFetch: true, fetchImpl: cors });
    await flush();
    expect(errors[0]).toMatchObject({ code: 'connect_failed' });
    expect(errors[0]!.message).toContain('GATEWAY_ALLOWED_ORIGINS');
  });
});

describe('issue 26 #7: selection changes are make-before-break', () => {
  it('WebSocket: subscribes to the new need before unsubscribing the old (no gap)', async () => {
    const { client } = make({}, undefined, { listen: false });
    const off = client.select('notification.#');
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    client.select('render.job.#');
    off();
    await advance(100);
    expect(ws.sent).toEqual([
      { type: 'subscribe', types: ['render.job.#'] },
      { type: 'unsubscribe', types: ['notification.#'] },
    ]);
  });

  it('SSE: the wider stream opens beside the serving one: no reconnecting, no token request', async () => {
    const { client, states, getToken, events } = make({ transport: 'sse' }, undefined, { listen: false });
    client.onEvent((e) => events.push(e), { types: 'notification.#' });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    client.onJob('j1', () => {});
    await advance(50);
    expect(FakeEventSource.instances).toHaveLength(2);
    const next = FakeEventSource.last();
    expect(next.query.get('types')).toBe('notification.#,render.job.#');
    expect(es.closed).toBe(false);
    es.receive(envelope('notification.created.v1', { notification_id: 'n' }, 'n1'));
    next.open();
    expect(es.closed).toBe(true);
    next.receive(envelope('notification.created.v1', { notification_id: 'n' }, 'n1'));
    expect(events.map((e) => e.event_id)).toEqual(['n1']);
    expect(states).toEqual(['open']);
    expect(client.state).toBe('open');
    expect(getToken).toHaveBeenCalledTimes(1);
  });
});

describe('issue 26 #8: wake respects autoConnect and the backoff; a refused selection is named', () => {
  it('autoConnect: false: online, focus or the tab shown connect nothing', async () => {
    const p = page();
    make({ lifecycle: p.lifecycle, autoConnect: false });
    await flush();
    p.win.dispatchEvent(new Event('online'));
    p.win.dispatchEvent(new Event('focus'));
    p.setVisible(false);
    await advance(120_000);
    p.setVisible(true);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('switching tabs while reconnecting does not skip the backoff', async () => {
    const p = page();
    make({ lifecycle: p.lifecycle, backoff: { initialMs: 1_000, maxMs: 30_000 } });
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    for (let i = 0; i < 6; i++) {
      p.setVisible(false);
      await advance(1);
      p.setVisible(true);
      await flush();
    }
    expect(FakeWebSocket.instances.length).toBeLessThanOrEqual(2);
    // Ten seconds of switching tabs make no more attempts than the backoff allows.
    for (let i = 0; i < 100; i++) {
      p.setVisible(false);
      await advance(50);
      p.setVisible(true);
      await advance(50);
      FakeWebSocket.last().fail();
    }
    expect(FakeWebSocket.instances.length).toBeLessThanOrEqual(6);
  });

  it('a selection over the gateway limit is reported as such, not as a blocked WebSocket', async () => {
    const fetch = new FakeFetch((): Response => admitted());
    fetch.answer(admitted(), refusal(400, 'bad_request', 'types'));
    const { client, errors } = make({}, fetch, { listen: false });
    client.select(['a.#', 'b.#', 'c.#']);
    await flush();
    expect(FakeWebSocket.last().query.get('types')).toBe('a.#,b.#,c.#');
    FakeWebSocket.last().fail();
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['invalid_types']);
    expect(errors[0]!.message).toContain('GATEWAY_MAX_INTEREST_PATTERNS');
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last().query.has('types')).toBe(false); // everything, which any limit allows
    expect(client.transport).toBe('websocket');
  });
});

describe('issue 26 #6: server rendering never connects', () => {
  it('a client created at module scope on a server with WebSocket and fetch (Node 22) stays still', async () => {
    const fetch = new FakeFetch(() => Response.json({ token: 'tok' }));
    vi.stubGlobal('WebSocket', FakeWebSocket);
    vi.stubGlobal('fetch', fetch.fetch);
    const client = createRealtimeClient({ url: URL_BASE, tokenUrl: 'https://studio.example/api/realtime-token' });
    client.reconnect();
    await advance(60_000);
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(fetch.calls).toHaveLength(0);
    client.close();
  });

  it('and on Node 20 (no WebSocket, a relative token URL) it does not loop on token_error', async () => {
    const fetch = new FakeFetch(() => Promise.reject(new TypeError('Failed to parse URL')));
    vi.stubGlobal('fetch', fetch.fetch);
    const errors: string[] = [];
    const client = createRealtimeClient({ url: URL_BASE, tokenUrl: '/api/realtime-token', onError: (e) => errors.push(e.code) });
    await advance(60_000);
    expect(fetch.calls).toHaveLength(0);
    expect(errors).toEqual([]);
    client.close();
  });
});

describe('issue 26 #6: a statically built page learns the gateway URL from the token endpoint', () => {
  it('no url in the options: the token answer {token, url, transport} says where and how', async () => {
    const fetch = new FakeFetch(() => Response.json({ token: 'tok', url: 'https://rt2.flatrender.example', transport: 'sse' }));
    const { client } = make({ tokenUrl: 'https://studio.example/api/realtime-token', url: undefined }, fetch);
    await flush();
    expect(FakeEventSource.last().url).toMatch(/^https:\/\/rt2\.flatrender\.example\/sse/);
    expect(client.transport).toBe('sse');
  });

  it('neither gives a url: invalid_options, fatal, and the token goes nowhere', async () => {
    const fetch = new FakeFetch(() => Response.json({ token: 'tok' }));
    const { client, errors } = make({ tokenUrl: 'https://studio.example/api/realtime-token', url: undefined }, fetch);
    await flush();
    expect(errors).toMatchObject([{ code: 'invalid_options', severity: 'fatal' }]);
    expect(client.state).toBe('closed');
    expect(FakeWebSocket.instances).toHaveLength(0);
  });
});

describe('issue 26 #9: debug logging and the app catalog', () => {
  it('debug: says what the client does and why, never the token', async () => {
    const lines: string[] = [];
    const token = jwt({ iat: nowSecs, exp: nowSecs + 600, sub: 'user-1' });
    make({ getToken: async () => token, debug: (m, d) => lines.push(`${m} ${JSON.stringify(d ?? {})}`) });
    await flush();
    FakeWebSocket.last().fail();
    await flush();
    expect(lines.join('\n')).toMatch(/reconnecting/);
    expect(lines.join('\n')).not.toContain(token);
  });

  it("on(type) delivers an app's own event type (declared by augmenting EventCatalog)", async () => {
    const { client } = make({}, undefined, { listen: false });
    const got: unknown[] = [];
    client.on('comment.added.v1' as never, (e: { data: unknown }) => got.push(e.data));
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().receive(envelope('comment.added.v1', { text: 'hi' }));
    expect(got).toEqual([{ text: 'hi' }]);
  });
});
