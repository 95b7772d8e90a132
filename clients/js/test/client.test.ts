import { describe, expect, expectTypeOf, it, vi } from 'vitest';
import { type EventSourceConstructor, type RealtimeClient, type WebSocketConstructor } from '../src/index.js';
import { envelope, FakeEventSource, FakeWebSocket, flush, jwt } from './fakes.js';
import { advance, make, T0 } from './harness.js';

describe('WebSocket delivery', () => {
  it('connects to wss://…/ws with the token in the subprotocol header and delivers events', async () => {
    const { client, events, states } = make();
    expect(client.state).toBe('connecting');
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.url).toBe(`wss://rt.flatrender.example/ws`);
    expect(ws.protocols).toEqual(['realtime-gateway.v1', 'bearer.tok']);
    ws.open();
    expect(client.state).toBe('open');
    expect(client.transport).toBe('websocket');

    const e = envelope('render.job.progress.v1', { job_id: 'j1', progress: 40 });
    ws.receive(e);
    expect(events).toEqual([e]);
    expect(client.lastEventId).toBe(e.event_id);
    expect(states).toEqual(['open']);
  });

  it('onJob filters by job_id, onNotification and on(type) by type', async () => {
    const { client } = make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    const j1: string[] = [];
    const notes: string[] = [];
    const completed: (string | undefined)[] = [];
    client.onJob('j1', (e) => j1.push(e.event_type));
    client.onNotification((e) => notes.push(e.data.notification_id));
    client.on('render.job.completed.v1', (e) => completed.push(e.data.output_url));

    ws.receive(envelope('render.job.started.v1', { job_id: 'j1' }));
    ws.receive(envelope('render.job.started.v1', { job_id: 'j2' }));
    ws.receive(envelope('render.job.completed.v1', { job_id: 'j1', output_url: 'https://cdn/x.mp4' }));
    ws.receive(envelope('notification.created.v1', { notification_id: 'n1', title: 'Done' }));
    ws.receive(envelope('notification.delivered.v1', { notification_id: 'n1' }));
    ws.receive(envelope('billing.invoice.paid.v1', { job_id: 'j1' })); // unknown type: onEvent only

    expect(j1).toEqual(['render.job.started.v1', 'render.job.completed.v1']);
    expect(notes).toEqual(['n1', 'n1']);
    expect(completed).toEqual(['https://cdn/x.mp4']);
  });

  it('unsubscribe stops delivery; a throwing listener does not stop the others', async () => {
    const reported = vi.spyOn(console, 'error').mockImplementation(() => {});
    const { client, events } = make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    const seen: string[] = [];
    client.onEvent(() => {
      throw new Error('boom');
    });
    const off = client.onEvent((e) => seen.push(e.event_id));
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'a'));
    off();
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'b'));
    expect(seen).toEqual(['a']);
    expect(events.map((e) => e.event_id)).toEqual(['a', 'b']);
    expect(reported).toHaveBeenCalledTimes(2);
    reported.mockRestore();
  });

  it('control messages are never delivered as events; resync calls back', async () => {
    const onResync = vi.fn();
    const { client, events, errors } = make({ onResync });
    const viaMethod = vi.fn();
    client.onResync(viaMethod);
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive({ type: 'resync' });
    ws.receive({ type: 'pong' });
    ws.receive({ type: 'refreshed', exp: 123 });
    ws.receive({ type: 'error', reason: 'unknown_message' });
    ws.receive('not json');
    ws.receive({ event_id: 'x' }); // no event_type: not a valid event either
    expect(events).toEqual([]);
    expect(onResync).toHaveBeenCalledTimes(1);
    expect(viaMethod).toHaveBeenCalledTimes(1);
    expect(errors.map((e) => e.code)).toEqual(['server_error']);
    expect(client.lastEventId).toBeNull();
  });

  it('keeps a path prefix and maps http to ws', async () => {
    make({ url: 'http://localhost:8080/realtime/' });
    await flush();
    expect(FakeWebSocket.last().url).toBe('ws://localhost:8080/realtime/ws');
  });
});

describe('auth', () => {
  it('tokenTransport "query": URL-encodes the token in access_token and offers no subprotocol', async () => {
    const token = 'ab+c/d==';
    make({ getToken: async () => token, tokenTransport: 'query' });
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.url).not.toContain('ab+c/d');
    expect(ws.url).toContain('access_token=ab%2Bc%2Fd%3D%3D');
    expect(ws.query.get('access_token')).toBe(token);
    expect(ws.protocols).toEqual([]);
  });

  it('cookie mode: no token means no access_token, and withCredentials for SSE', async () => {
    make({ getToken: async () => null });
    await flush();
    expect(FakeWebSocket.last().url).toBe('wss://rt.flatrender.example/ws');
    expect(FakeWebSocket.last().protocols).toEqual([]);

    make({ getToken: async () => undefined, transport: 'sse' });
    await flush();
    const es = FakeEventSource.last();
    expect(es.url).toBe('https://rt.flatrender.example/sse');
    expect(es.withCredentials).toBe(true);
  });

  it('token mode SSE does not ask for credentials', async () => {
    make({ transport: 'sse' });
    await flush();
    const es = FakeEventSource.last();
    expect(es.query.get('access_token')).toBe('tok');
    expect(es.withCredentials).toBe(false);
  });

  it('calls getToken before every attempt and uses what it returns', async () => {
    let n = 0;
    const getToken = vi.fn(async () => `tok-${++n}`);
    make({ getToken, transport: 'websocket' });
    await flush();
    FakeWebSocket.last().fail();
    await advance(1_000);
    FakeWebSocket.last().fail();
    await advance(2_000);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(FakeWebSocket.instances.map((ws) => ws.bearer)).toEqual(['tok-1', 'tok-2', 'tok-3']);
  });

  it('a throwing getToken counts as a failed attempt and is retried', async () => {
    const getToken = vi.fn<() => Promise<string>>().mockRejectedValueOnce(new Error('offline')).mockResolvedValue('tok');
    const { errors, client } = make({ getToken });
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['token_error']);
    expect(client.state).toBe('unauthorized');
    expect(FakeWebSocket.instances).toHaveLength(0);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });
});

describe('reconnect', () => {
  it('backs off exponentially with full jitter and resets once healthy', async () => {
    const random = vi.fn(() => 0.5);
    const { client, states } = make({ random, transport: 'websocket', backoff: { initialMs: 1_000, maxMs: 4_000 } });
    await flush();
    // Expected waits: 0.5 * min(4000, 1000 * 2^n) = 500, 1000, 2000, 2000 (capped).
    for (const wait of [500, 1_000, 2_000, 2_000]) {
      const before = FakeWebSocket.instances.length;
      FakeWebSocket.last().fail();
      expect(client.state).toBe('reconnecting');
      await advance(wait - 1);
      expect(FakeWebSocket.instances).toHaveLength(before);
      await advance(1);
      expect(FakeWebSocket.instances).toHaveLength(before + 1);
    }
    expect(random).toHaveBeenCalledTimes(4);

    // An open connection that delivers an event resets the backoff.
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }));
    ws.serverClose(1001, 'server shutting down');
    await advance(499);
    expect(FakeWebSocket.instances).toHaveLength(5);
    await advance(1);
    expect(FakeWebSocket.instances).toHaveLength(6);
    expect(states).toEqual(['reconnecting', 'open', 'reconnecting']);
  });

  it('the jitter is the whole range: random() scales the delay from 0 up to the ceiling', async () => {
    const values = [0, 0.999];
    make({ random: () => values.shift() ?? 0, transport: 'websocket', backoff: { initialMs: 1_000, maxMs: 10_000 } });
    await flush();
    FakeWebSocket.last().fail();
    await advance(0); // random 0 -> reconnect at once
    expect(FakeWebSocket.instances).toHaveLength(2);
    FakeWebSocket.last().fail();
    await advance(1_997); // 0.999 * 2000 = 1998
    expect(FakeWebSocket.instances).toHaveLength(2);
    await advance(1);
    expect(FakeWebSocket.instances).toHaveLength(3);
  });

  it('an accept-then-drop loop still backs off (no healthy reset without a message)', async () => {
    make({ backoff: { initialMs: 1_000, maxMs: 60_000 } });
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4000, 'slow client');
    await advance(500);
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(4000, 'slow client');
    await advance(999);
    expect(FakeWebSocket.instances).toHaveLength(2);
    await advance(1);
    expect(FakeWebSocket.instances).toHaveLength(3);
  });

  it('resumes with last_event_id and drops duplicates at the replay seam', async () => {
    const { events, client } = make();
    await flush();
    const ws1 = FakeWebSocket.last();
    ws1.open();
    ws1.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 10 }, 'e1'));
    ws1.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 20 }, 'e2'));
    ws1.serverClose(4000, 'slow client');
    await advance(500);

    const ws2 = FakeWebSocket.last();
    expect(ws2.query.get('last_event_id')).toBe('e2');
    ws2.open();
    // Replay overlapping what we already have, then new events.
    ws2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 20 }, 'e2'));
    ws2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 30 }, 'e3'));
    ws2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 10 }, 'e1'));
    expect(events.map((e) => e.event_id)).toEqual(['e1', 'e2', 'e3']);
    expect(client.lastEventId).toBe('e3');
  });

  it('keeps the position a quiet connection is given and resumes from it', async () => {
    const { client } = make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('notification.created.v1', { notification_id: 'n' }, 'e1'));
    ws.receive({ type: 'position', position: 'p:00000000000000ff' });
    expect(client.lastEventId).toBe('p:00000000000000ff');
    ws.receive({ type: 'position', position: 'not a position' });
    expect(client.lastEventId).toBe('p:00000000000000ff');
    ws.serverClose(1001, 'server shutting down');
    await advance(5_000);
    expect(FakeWebSocket.last().query.get('last_event_id')).toBe('p:00000000000000ff');
  });

  it('starts from a given lastEventId', async () => {
    make({ lastEventId: 'evt-99' });
    await flush();
    expect(FakeWebSocket.last().query.get('last_event_id')).toBe('evt-99');
  });

  it('4001 token expired reconnects with a fresh token from getToken', async () => {
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce('old').mockResolvedValue('new');
    make({ getToken });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.started.v1', { job_id: 'j' }, 'e7'));
    ws.serverClose(4001, 'token expired');
    await advance(500);
    expect(getToken).toHaveBeenCalledTimes(2);
    const next = FakeWebSocket.last();
    expect(next).not.toBe(ws);
    expect(next.bearer).toBe('new');
    expect(next.query.get('last_event_id')).toBe('e7');
  });

  it.each([1001, 4000, 4002, 1006])('close %i reconnects', async (code) => {
    make();
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(code);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('1009 reconnects but reports message_too_big', async () => {
    const { errors } = make();
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(1009, 'message too big');
    expect(errors.map((e) => [e.code, e.closeCode])).toEqual([['message_too_big', 1009]]);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('1008 stops: state closed, error surfaced, no retry until reconnect()', async () => {
    const { client, errors, states } = make();
    await flush();
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(1008, 'refresh token for another identity');
    expect(client.state).toBe('closed');
    expect(errors.map((e) => [e.code, e.closeCode])).toEqual([['identity_mismatch', 1008]]);
    await advance(10 * 60_000);
    expect(FakeWebSocket.instances).toHaveLength(1);

    client.reconnect();
    expect(client.state).toBe('connecting');
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(states).toEqual(['open', 'closed', 'connecting']);
  });

  it('abandons an attempt that neither opens nor fails within connectTimeoutMs', async () => {
    make({ connectTimeoutMs: 3_000 });
    await flush();
    const ws = FakeWebSocket.last();
    await advance(2_999);
    expect(ws.closedByClient).toBeUndefined();
    await advance(1);
    expect(ws.closedByClient).toBe(1000);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('a throwing constructor is reported and retried like a failed attempt', async () => {
    let calls = 0;
    class Throwing extends FakeWebSocket {
      constructor(url: string) {
        if (++calls === 1) throw new SyntaxError('blocked by CSP');
        super(url);
      }
    }
    const { errors } = make({ WebSocketImpl: Throwing });
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['connect_failed']);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('optional ping: drops a connection that stays silent for a whole interval', async () => {
    make({ pingIntervalMs: 10_000 });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(10_000);
    expect(ws.sent).toEqual([{ type: 'ping' }]);
    ws.receive({ type: 'pong' });
    await advance(10_000);
    expect(ws.sent).toEqual([{ type: 'ping' }, { type: 'ping' }]);
    // No pong this time.
    await advance(10_000);
    expect(ws.closedByClient).toBe(1000);
    await advance(500);
    expect(FakeWebSocket.instances).toHaveLength(2);
  });

  it('pings every 20 s by default (below the gateway idle timeout); 0 turns it off', async () => {
    make({ pingIntervalMs: undefined });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(20_000);
    expect(ws.sent).toEqual([{ type: 'ping' }]);

    make({ pingIntervalMs: 0 });
    await flush();
    const quiet = FakeWebSocket.last();
    quiet.open();
    await advance(120_000);
    expect(quiet.sent).toEqual([]);
  });
});

describe('transport fallback', () => {
  it('auto falls back to SSE after 2 WebSocket attempts that never opened', async () => {
    const { client } = make();
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(client.transport).toBe('sse');
    FakeEventSource.last().open();
    expect(client.state).toBe('open');
  });

  it('a WebSocket that opened resets the failure count', async () => {
    make();
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    FakeWebSocket.last().open();
    FakeWebSocket.last().serverClose(1006);
    await advance(2_000);
    FakeWebSocket.last().fail();
    await advance(4_000);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(FakeWebSocket.instances).toHaveLength(4);
  });

  it('fallbackAfter is configurable; transport: "websocket" never falls back', async () => {
    make({ transport: 'websocket' });
    await flush();
    for (let i = 0; i < 4; i++) {
      FakeWebSocket.last().fail();
      await advance(30_000);
    }
    expect(FakeEventSource.instances).toHaveLength(0);

    FakeWebSocket.reset();
    make({ fallbackAfter: 1 });
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    expect(FakeEventSource.instances).toHaveLength(1);
  });

  it('uses SSE at once when WebSocket does not exist', async () => {
    vi.stubGlobal('WebSocket', undefined);
    const { client } = make({ WebSocketImpl: undefined });
    await flush();
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(client.transport).toBe('sse');
  });

  it('with no transport at all it stops with no_transport', async () => {
    vi.stubGlobal('WebSocket', undefined);
    vi.stubGlobal('EventSource', undefined);
    const { client, errors } = make({ WebSocketImpl: undefined, EventSourceImpl: undefined });
    await flush();
    expect(client.state).toBe('closed');
    expect(errors.map((e) => e.code)).toEqual(['no_transport']);
  });
});

describe('SSE', () => {
  it('delivers unnamed events, handles named resync, resumes with last_event_id', async () => {
    const onResync = vi.fn();
    const { events, getToken } = make({ transport: 'sse', onResync });
    await flush();
    const es = FakeEventSource.last();
    // EventSource cannot set headers: SSE keeps the query parameter.
    expect(es.url).toBe('https://rt.flatrender.example/sse?access_token=tok');
    es.open();
    es.receive(envelope('notification.created.v1', { notification_id: 'n1' }, 's1'));
    es.emit('resync', { type: 'resync' });
    expect(onResync).toHaveBeenCalledTimes(1);
    expect(events.map((e) => e.event_id)).toEqual(['s1']);

    // Network error: we close the EventSource (no browser auto-retry with a stale URL)
    // and open a new one ourselves with a fresh token and last_event_id.
    es.fail(0);
    expect(es.closed).toBe(true);
    await advance(500);
    expect(getToken).toHaveBeenCalledTimes(2);
    const es2 = FakeEventSource.last();
    expect(es2).not.toBe(es);
    expect(es2.query.get('last_event_id')).toBe('s1');
    es2.open();
    es2.receive(envelope('notification.created.v1', { notification_id: 'n1' }, 's1')); // seam duplicate
    es2.receive(envelope('notification.created.v1', { notification_id: 'n2' }, 's2'));
    expect(events.map((e) => e.event_id)).toEqual(['s1', 's2']);
  });

  it('a quiet stream keeps the position its heartbeat carries', async () => {
    const { client } = make({ transport: 'sse' });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('notification.created.v1', { notification_id: 'n1' }, 's1'));
    // A heartbeat after an event only repeats that event's id: nothing changes.
    es.emit('heartbeat', {}, 's1');
    expect(client.lastEventId).toBe('s1');
    es.emit('heartbeat', {}, 'p:0123456789abcdef');
    expect(client.lastEventId).toBe('p:0123456789abcdef');
    es.fail(0);
    await advance(500);
    expect(FakeEventSource.last().query.get('last_event_id')).toBe('p:0123456789abcdef');
  });

  it('event: close (token_expired) reconnects with a fresh token', async () => {
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce('old').mockResolvedValue('new');
    const { events } = make({ transport: 'sse', getToken });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'q1'));
    es.emit('close', { type: 'close', reason: 'token_expired' });
    expect(es.closed).toBe(true);
    expect(events).toHaveLength(1); // the close message is not an event
    await advance(500);
    const es2 = FakeEventSource.last();
    expect(es2.query.get('access_token')).toBe('new');
    expect(es2.query.get('last_event_id')).toBe('q1');
  });

  it('a WebSocket that has worked is not abandoned for SSE after an outage', async () => {
    make();
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'w1'));
    ws.serverClose(1006);
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    FakeWebSocket.last().fail();
    await advance(2_000);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(FakeWebSocket.last().query.get('last_event_id')).toBe('w1');
  });

  it('lastEventId carries across transports (WebSocket blocked, then SSE)', async () => {
    make({ lastEventId: 'saved' });
    await flush();
    FakeWebSocket.last().fail();
    await advance(500);
    FakeWebSocket.last().fail();
    await advance(1_000);
    expect(FakeWebSocket.instances[0]!.query.get('last_event_id')).toBe('saved');
    expect(FakeEventSource.last().query.get('last_event_id')).toBe('saved');
  });
});

describe('token refresh', () => {
  const now = T0 / 1000;

  it('WebSocket: sends an in-band refresh before exp and plans the next from the new token', async () => {
    // 600 s lifetime: refresh at min(exp - 60 s, 80 % = 480 s) = 480 s.
    const first = jwt({ sub: 'u', iat: now, exp: now + 600 });
    const second = jwt({ sub: 'u', iat: now + 480, exp: now + 1080 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue(second);
    make({ getToken });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(479_999);
    expect(ws.sent).toEqual([]);
    await advance(1);
    expect(getToken).toHaveBeenCalledTimes(2);
    expect(ws.sent).toEqual([{ type: 'refresh', token: second }]);
    ws.receive({ type: 'refreshed', exp: now + 1080 });

    // Next refresh 480 s after the second token was issued; still no reconnect.
    const third = jwt({ sub: 'u', iat: now + 960, exp: now + 1560 });
    getToken.mockResolvedValue(third);
    await advance(480_000);
    expect(ws.sent).toEqual([
      { type: 'refresh', token: second },
      { type: 'refresh', token: third },
    ]);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('refreshBeforeExpiryMs wins when it is sooner than 80 %', async () => {
    const first = jwt({ iat: now, exp: now + 3600 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue('next');
    make({ getToken, refreshBeforeExpiryMs: 30 * 60_000 });
    await flush();
    FakeWebSocket.last().open();
    await advance(30 * 60_000 - 1);
    expect(FakeWebSocket.last().sent).toEqual([]);
    await advance(1);
    expect(FakeWebSocket.last().sent).toEqual([{ type: 'refresh', token: 'next' }]);
  });

  it('a refused refresh is reported; the later 4001 reconnect fetches a token again', async () => {
    const first = jwt({ iat: now, exp: now + 600 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue('bad');
    const { errors } = make({ getToken });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(480_000);
    ws.receive({ type: 'error', reason: 'refresh_signature' });
    expect(errors.map((e) => [e.code, e.reason])).toEqual([['refresh_failed', 'refresh_signature']]);
    ws.serverClose(4001, 'token expired');
    await advance(500);
    expect(getToken).toHaveBeenCalledTimes(3);
  });

  it('the same token again is not sent; asked again a little later', async () => {
    const only = jwt({ iat: now, exp: now + 600 });
    const getToken = vi.fn(async () => only);
    make({ getToken });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(480_000);
    expect(getToken).toHaveBeenCalledTimes(2);
    await advance(5_000);
    expect(getToken).toHaveBeenCalledTimes(3);
    expect(ws.sent).toEqual([]);
  });

  it('SSE: opens a stream with the fresh token shortly before exp, beside the old one', async () => {
    const first = jwt({ iat: now, exp: now + 600 });
    const second = jwt({ iat: now + 480, exp: now + 1080 });
    const getToken = vi.fn<() => Promise<string>>().mockResolvedValueOnce(first).mockResolvedValue(second);
    const { events } = make({ transport: 'sse', getToken });
    await flush();
    const es = FakeEventSource.last();
    es.open();
    es.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 5 }, 'p1'));
    await advance(480_000);
    const es2 = FakeEventSource.last();
    expect(es2).not.toBe(es);
    expect(es.closed).toBe(false);
    expect(es2.query.get('access_token')).toBe(second);
    es2.open();
    expect(es.closed).toBe(true);
    expect(getToken).toHaveBeenCalledTimes(2);
    es2.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 6 }, 'p2'));
    expect(events.map((e) => e.event_id)).toEqual(['p1', 'p2']);
  });

  it('cookie mode plans no refresh (the gateway closes at exp and we reconnect)', async () => {
    const getToken = vi.fn(async () => null);
    make({ getToken });
    await flush();
    FakeWebSocket.last().open();
    await advance(3_600_000);
    expect(getToken).toHaveBeenCalledTimes(1);
  });
});

describe('close()', () => {
  it('closes the connection, cancels timers, and delivers nothing more', async () => {
    const onStateChange = vi.fn();
    const { client, events } = make({ onStateChange, pingIntervalMs: 1_000 });
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    client.close();
    expect(ws.closedByClient).toBe(1000);
    expect(client.state).toBe('closed');
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }));
    ws.serverClose(1001);
    await advance(600_000);
    expect(events).toEqual([]);
    expect(ws.sent).toEqual([]);
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(onStateChange.mock.calls.map((c) => c[0])).toEqual(['open', 'closed']);
    client.reconnect(); // no-op after close()
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('cancels a pending backoff', async () => {
    const { client } = make();
    await flush();
    FakeWebSocket.last().fail();
    client.close();
    await advance(600_000);
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('while getToken is pending, no connection is made', async () => {
    let resolve!: (t: string) => void;
    const { client } = make({ getToken: () => new Promise<string>((r) => (resolve = r)) });
    await flush();
    client.close();
    resolve('tok');
    await flush();
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('closes an SSE stream too', async () => {
    const { client } = make({ transport: 'sse' });
    await flush();
    client.close();
    expect(FakeEventSource.last().closed).toBe(true);
  });
});

describe('types', () => {
  it('narrows data by event_type', () => {
    const c = {} as RealtimeClient;
    expectTypeOf(c.on<'render.job.progress.v1'>)
      .parameter(1)
      .parameter(0)
      .toHaveProperty('data')
      .toHaveProperty('progress')
      .toEqualTypeOf<number>();
    // The browser's own constructors fit the injectable slots.
    expectTypeOf<typeof WebSocket>().toMatchTypeOf<WebSocketConstructor>();
    expectTypeOf<typeof EventSource>().toMatchTypeOf<EventSourceConstructor>();
  });
});
