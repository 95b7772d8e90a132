/**
 * Selecting event types: the union of what listeners, hooks and select() need goes to the
 * gateway as `types=` on connect, in band over WebSocket, and by a resuming reconnect over SSE.
 */
import { describe, expect, it } from 'vitest';
import { envelope, FakeEventSource, FakeWebSocket, flush } from './fakes.js';
import { advance, make } from './harness.js';

const bare = (opts = {}) => make(opts, undefined, { listen: false });
const selections = (ws: FakeWebSocket) =>
  ws.sent.filter((m) => ['subscribe', 'unsubscribe'].includes((m as { type: string }).type));

describe('types= on connect', () => {
  it('nothing registered asks for everything, as before', async () => {
    const { client } = bare();
    await flush();
    expect(FakeWebSocket.last().query.has('types')).toBe(false);
    expect(client.selection).toBeNull();
  });

  it('what is registered before the URL is built goes in types=, reduced and sorted', async () => {
    const { client } = bare();
    client.onJob('j1', () => {});
    client.onNotification(() => {});
    client.on('notification.created.v1', () => {}); // covered by notification.#
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.query.get('types')).toBe('notification.#,render.job.#');
    expect(ws.url).toContain('types=notification.%23%2Crender.job.%23');
    ws.open();
    await advance(100);
    expect(selections(ws)).toEqual([]); // the gateway already holds it
  });

  it('an onEvent listener without types selects everything; with types, only those (and filters)', async () => {
    const { client } = bare();
    const got: string[] = [];
    client.onEvent((e) => got.push(e.event_type), { types: 'render.*.completed.v1' });
    const off = client.onEvent(() => {});
    expect(client.selection).toBeNull();
    off();
    expect(client.selection).toEqual(['render.*.completed.v1']);
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 1 }));
    ws.receive(envelope('render.job.completed.v1', { job_id: 'j' }));
    expect(got).toEqual(['render.job.completed.v1']);
  });

  it('autoConnect: false opens nothing until reconnect(), which carries what was selected meanwhile', async () => {
    const { client } = bare({ transport: 'sse', autoConnect: false });
    await flush();
    await advance(1000);
    expect(FakeEventSource.instances).toHaveLength(0);
    expect(client.state).toBe('connecting');
    client.onNotification(() => {});
    await advance(100); // the debounced selection has no connection to change
    expect(FakeEventSource.instances).toHaveLength(0);
    client.reconnect();
    await flush();
    expect(FakeEventSource.instances).toHaveLength(1);
    expect(new URL(FakeEventSource.last().url).searchParams.get('types')).toBe('notification.#');
  });

  it('bad patterns throw at once and are never sent', async () => {
    const { client } = bare();
    expect(() => client.select('render job')).toThrow(TypeError);
    expect(() => client.onEvent(() => {}, { types: ['ok.#', 'a..b'] })).toThrow(TypeError);
    expect(client.selection).toBeNull();
  });

  it('more patterns than maxSelectedTypes ask for everything', async () => {
    const { client } = bare({ maxSelectedTypes: 2 });
    client.select(['a.#', 'b.#', 'c.#']);
    await flush();
    expect(FakeWebSocket.last().query.has('types')).toBe(false);
  });

  it('a reconnect carries the current selection and last_event_id', async () => {
    const { client } = bare();
    const off = client.select('render.job.#');
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive(envelope('render.job.queued.v1', { job_id: 'j' }, 'e1'));
    client.select('notification.#');
    off();
    ws.serverClose(1001);
    await advance(1_000);
    const again = FakeWebSocket.last();
    expect(again).not.toBe(ws);
    expect(again.query.get('types')).toBe('notification.#');
    expect(again.query.get('last_event_id')).toBe('e1');
  });
});

describe('WebSocket: in band, without reconnecting', () => {
  async function connected(initial: string[]) {
    const h = bare();
    const offs = initial.map((t) => h.client.select(t));
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    return { ...h, ws, offs };
  }

  it('a mount adds, an unmount removes; one message per burst; the socket stays', async () => {
    const { client, ws, errors } = await connected(['notification.#']);
    const offJob = client.onJob('j1', () => {});
    const offOther = client.onJob('j2', () => {}); // same pattern, same burst
    await advance(49);
    expect(selections(ws)).toEqual([]); // still gathering
    await advance(1);
    expect(selections(ws)).toEqual([{ type: 'subscribe', types: ['render.job.#'] }]);
    ws.receive({ type: 'subscribed', types: ['notification.#', 'render.job.#'] });

    offJob();
    await advance(100);
    expect(selections(ws)).toHaveLength(1); // j2 still needs render.job.#
    offOther();
    await advance(100);
    expect(selections(ws)[1]).toEqual({ type: 'unsubscribe', types: ['render.job.#'] });
    ws.receive({ type: 'subscribed', types: ['notification.#'] });
    expect(FakeWebSocket.instances).toHaveLength(1);
    expect(client.state).toBe('open');
    expect(errors).toEqual([]);
  });

  it('a mount and unmount within the window (StrictMode) sends nothing', async () => {
    const { client, ws } = await connected(['notification.#']);
    const off = client.select('render.job.#');
    off();
    client.select('render.job.#')(); // and again
    await advance(200);
    expect(selections(ws)).toEqual([]);
  });

  it('from the default (everything), the first subscribe narrows; releasing all widens to #', async () => {
    const { client, ws } = await connected([]);
    expect(ws.query.has('types')).toBe(false);
    const off = client.select(['render.job.#', 'notification.#']);
    await advance(100);
    expect(selections(ws)).toEqual([{ type: 'subscribe', types: ['notification.#', 'render.job.#'] }]);
    ws.receive({ type: 'subscribed', types: ['notification.#', 'render.job.#'] });
    off();
    await advance(100);
    expect(selections(ws).slice(1)).toEqual([
      { type: 'subscribe', types: ['#'] },
      { type: 'unsubscribe', types: ['notification.#', 'render.job.#'] },
    ]);
  });

  it('replacing one need by another adds first, then drops; drops first only at the limit', async () => {
    const { client, ws, offs } = await connected(['notification.#']);
    client.select('render.job.#');
    offs[0]!();
    await advance(100);
    expect(selections(ws)).toEqual([
      { type: 'subscribe', types: ['render.job.#'] },
      { type: 'unsubscribe', types: ['notification.#'] },
    ]);
  });

  it('at the pattern limit the drop goes first, keeping the gateway within it', async () => {
    const h = bare({ maxSelectedTypes: 1 });
    const off = h.client.select('notification.#');
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    await advance(100);
    h.client.select('render.job.#');
    off();
    await advance(100);
    expect(ws.query.get('types')).toBe('notification.#');
    expect(selections(ws)).toEqual([
      { type: 'unsubscribe', types: ['notification.#'] },
      { type: 'subscribe', types: ['render.job.#'] },
    ]);
  });

  it('changes made while the socket opens are sent once it is open', async () => {
    const { client } = bare();
    client.select('notification.#');
    await flush();
    const ws = FakeWebSocket.last();
    expect(ws.query.get('types')).toBe('notification.#');
    client.select('render.job.#');
    await advance(100); // the window passes before the gateway accepts
    expect(ws.sent).toEqual([]);
    ws.open();
    expect(selections(ws)).toEqual([{ type: 'subscribe', types: ['render.job.#'] }]);
  });

  it('subscribed and its errors are control messages: never events, never health', async () => {
    const { client, ws, events } = await connected(['notification.#']);
    client.select('render.job.#');
    await advance(100);
    ws.receive({ type: 'subscribed', types: ['notification.#', 'render.job.#'] });
    expect(events).toEqual([]);
    expect(client.lastEventId).toBeNull();
  });

  it('invalid_types is reported and the connection falls back to everything', async () => {
    const { client, ws, errors } = await connected(['notification.#']);
    client.select('render.job.#');
    await advance(100);
    ws.receive({ type: 'error', reason: 'invalid_types' });
    expect(errors.map((e) => [e.code, e.reason])).toEqual([['invalid_types', 'invalid_types']]);
    expect(selections(ws).slice(1)).toEqual([
      { type: 'unsubscribe', types: ['notification.#', 'render.job.#'] },
      { type: 'subscribe', types: ['#'] },
    ]);
    client.select('billing.#');
    await advance(100);
    expect(selections(ws)).toHaveLength(3); // this connection is left alone now
    expect(client.state).toBe('open');
  });

  it('a gateway without in-band selection (unknown_message) is left alone, quietly', async () => {
    const { client, ws, errors } = await connected(['notification.#']);
    client.select('render.job.#');
    await advance(100);
    ws.receive({ type: 'error', reason: 'unknown_message' });
    client.select('billing.#');
    await advance(100);
    expect(selections(ws)).toHaveLength(1);
    expect(errors).toEqual([]);
    // Other errors are still reported as before.
    ws.receive({ type: 'error', reason: 'unknown_message' });
    expect(errors.map((e) => e.code)).toEqual(['server_error']);
  });
});

describe('SSE: a new stream beside the old', () => {
  it('needing a new type opens a stream with the new types= beside the serving one, once per burst', async () => {
    const { client, states } = bare({ transport: 'sse' });
    client.select('notification.#');
    await flush();
    const es = FakeEventSource.last();
    expect(es.query.get('types')).toBe('notification.#');
    es.open();
    es.receive(envelope('notification.created.v1', { notification_id: 'n1' }, 'e7'));
    client.onJob('j1', () => {});
    client.onJob('j2', () => {});
    await advance(50);
    expect(es.closed).toBe(false);
    const next = FakeEventSource.last();
    expect(FakeEventSource.instances).toHaveLength(2);
    expect(next.query.get('types')).toBe('notification.#,render.job.#');
    // The old stream serves until the new one is open: no resume needed.
    expect(next.query.get('last_event_id')).toBeNull();
    next.open();
    expect(es.closed).toBe(true);
    expect(states).toEqual(['open']);
  });

  it('needing less does not reconnect: the stream carries more until it next reconnects', async () => {
    const { client } = bare({ transport: 'sse' });
    client.select('notification.#');
    const off = client.select('render.job.#');
    await flush();
    const es = FakeEventSource.last();
    es.open();
    off();
    await advance(5_000);
    expect(es.closed).toBe(false);
    expect(FakeEventSource.instances).toHaveLength(1);
    es.fail();
    await advance(5_000);
    expect(FakeEventSource.last().query.get('types')).toBe('notification.#');
  });

  it('a stream that has not opened yet is remade too', async () => {
    const { client } = bare({ transport: 'sse' });
    client.select('notification.#');
    await flush();
    const es = FakeEventSource.last();
    client.select('render.job.#');
    await advance(50);
    expect(es.closed).toBe(true);
    await advance(1_000);
    expect(FakeEventSource.last().query.get('types')).toBe('notification.#,render.job.#');
  });
});
