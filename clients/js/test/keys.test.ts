/**
 * Watching state keys: the jobs that listeners name go to the gateway as `keys=` (with
 * `snapshot=1`) on connect, in band over WebSocket (`watch`/`unwatch`), and by a stream
 * beside the serving one over SSE, so a job page receives its job only, its state first.
 */
import { describe, expect, it } from 'vitest';
import { admitted, FakeEventSource, FakeFetch, FakeWebSocket, flush, refusal } from './fakes.js';
import { advance, make } from './harness.js';

const bare = (opts = {}) => make(opts, undefined, { listen: false });
const changes = (ws: FakeWebSocket) =>
  ws.sent.filter((m) => ['subscribe', 'unsubscribe', 'watch', 'unwatch'].includes((m as { type: string }).type));

describe('keys= on connect', () => {
  it('a job named before the URL is built goes in keys=, with snapshot=1', async () => {
    const { client } = bare();
    client.onJob('j-2', () => {});
    client.onJob('j-1', () => {});
    client.onNotification(() => {}); // notifications are no state: they need no key
    expect(client.keys).toEqual(['j-1', 'j-2']);
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.query.get('keys')).toBe('j-1,j-2');
    expect(ws.query.get('snapshot')).toBe('1');
    expect(ws.query.get('types')).toBe('notification.#,render.job.#');
    ws.open();
    await advance(100);
    expect(changes(ws)).toEqual([]);
  });

  it('nothing watched: no keys= and no snapshot=', async () => {
    const { client } = bare();
    client.onNotification(() => {});
    await flush();
    expect(client.keys).toBeNull();
    expect(FakeWebSocket.last().query.has('keys')).toBe(false);
    expect(FakeWebSocket.last().query.has('snapshot')).toBe(false);
  });

  it('a listener for render job types without a job needs every key', async () => {
    const { client } = bare();
    client.onJob('j1', () => {});
    const off = client.onEvent(() => {}, { types: 'render.job.progress.v1' });
    expect(client.keys).toBeNull();
    off();
    expect(client.keys).toEqual(['j1']);
    client.select('notification.*.v1'); // matches no state type
    expect(client.keys).toEqual(['j1']);
    client.select('#');
    expect(client.keys).toBeNull();
  });

  it('a bad key throws at watch(); onJob with such an id falls back to every key', () => {
    const { client } = bare();
    expect(() => client.watch('job 1')).toThrow(TypeError);
    expect(() => client.watch(['ok', ''])).toThrow(TypeError);
    client.onJob('job 1', () => {});
    expect(client.keys).toBeNull();
  });
});

describe('a refusal of keys= before the upgrade', () => {
  it('400 keys asks for everything, every key included, until reconnect()', async () => {
    const fetch = new FakeFetch((): Response => admitted());
    fetch.answer(admitted(), refusal(400, 'bad_request', 'keys'));
    const { client, errors } = make({}, fetch, { listen: false });
    client.onJob('j1', () => {});
    await flush();
    expect(FakeWebSocket.last().query.get('keys')).toBe('j1');
    FakeWebSocket.last().fail();
    await flush();
    expect(errors.map((e) => e.code)).toEqual(['invalid_types']);
    await advance(1_000);
    expect(FakeWebSocket.instances).toHaveLength(2);
    expect(FakeWebSocket.last().query.has('keys')).toBe(false);
    expect(FakeWebSocket.last().query.has('types')).toBe(false);
  });
});

describe('in band over WebSocket', () => {
  it('watch with a snapshot for a new job, before unwatch of the old (make-before-break)', async () => {
    const { client } = bare();
    const offA = client.onJob('a', () => {});
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    const offB = client.onJob('b', () => {});
    offA();
    await advance(100);
    expect(changes(ws)).toEqual([
      { type: 'watch', keys: ['b'], snapshot: true },
      { type: 'unwatch', keys: ['a'] },
    ]);
    ws.receive({ type: 'subscribed', types: ['render.job.#'], keys: ['b', 'a'] });
    ws.receive({ type: 'subscribed', types: ['render.job.#'], keys: ['b'] });
    // A second listener for a job already held still starts empty: it gets a snapshot.
    client.watch('b');
    await advance(100);
    expect(changes(ws).slice(2)).toEqual([{ type: 'watch', keys: ['b'], snapshot: true }]);
    offB();
  });

  it('from every key, the first watch narrows; a job mounted beside a list asks for a snapshot by subscribe', async () => {
    const { client } = bare();
    client.onNotification(() => {});
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    const offList = client.onEvent(() => {}, { types: 'render.job.#' });
    const offJob = client.onJob('j1', () => {});
    await advance(100);
    expect(changes(ws)).toEqual([
      { type: 'subscribe', types: ['render.job.#'] },
      { type: 'subscribe', types: ['notification.#', 'render.job.#'], snapshot: true },
    ]);
    offList();
    await advance(100);
    expect(changes(ws).slice(2)).toEqual([{ type: 'watch', keys: ['j1'], snapshot: false }]);
    offJob();
  });

  it('back to every key: a socket without keys= replaces this one once open', async () => {
    const { client } = bare();
    client.onJob('j1', () => {});
    await flush();
    const first = FakeWebSocket.last();
    first.open();
    await advance(100);
    client.onEvent(() => {}, { types: 'render.job.#' });
    await advance(100);
    expect(FakeWebSocket.instances).toHaveLength(2);
    const next = FakeWebSocket.last();
    expect(next.query.has('keys')).toBe(false);
    expect(first.closedByClient).toBeUndefined();
    next.open();
    expect(first.closedByClient).toBe(1000);
    expect(client.state).toBe('open');
  });

  it('invalid_keys is a warning and selects every key on a new socket', async () => {
    const { client, errors } = bare();
    client.onJob('j1', () => {});
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    client.onJob('j2', () => {});
    await advance(100);
    ws.receive({ type: 'error', reason: 'invalid_keys' });
    expect(errors.map((e) => [e.code, e.severity])).toEqual([['invalid_keys', 'warning']]);
    expect(client.keys).toBeNull();
    await advance(100);
    expect(FakeWebSocket.last()).not.toBe(ws);
    expect(FakeWebSocket.last().query.has('keys')).toBe(false);
  });
});

describe('over SSE', () => {
  it('a newly watched job opens a stream with keys= and snapshot=1 beside the serving one', async () => {
    const { client } = bare({ transport: 'sse' });
    client.onNotification(() => {});
    await flush();
    const first = FakeEventSource.last();
    first.open();
    first.receive({ event_id: 'e1' } as never);
    expect(first.query.has('keys')).toBe(false);
    client.onJob('j1', () => {});
    await advance(100);
    expect(FakeEventSource.instances).toHaveLength(2);
    const next = FakeEventSource.last();
    expect(next.query.get('keys')).toBe('j1');
    expect(next.query.get('snapshot')).toBe('1');
    expect(next.query.has('last_event_id')).toBe(false);
    expect(first.closed).toBe(false);
    next.open();
    expect(first.closed).toBe(true);
    // Another job: the stream lacks it, so again.
    client.onJob('j2', () => {});
    await advance(100);
    expect(FakeEventSource.last().query.get('keys')).toBe('j1,j2');
  });
});
