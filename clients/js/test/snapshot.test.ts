/**
 * Snapshots: the latest state of every selected key, delivered to the same listeners
 * marked `snapshot`, over WebSocket (a control message) and SSE (`event: snapshot`).
 */
import { describe, expect, it } from 'vitest';
import type { EventInfo, RealtimeEvent, Snapshot } from '../src/index.js';
import { envelope, FakeEventSource, FakeWebSocket, flush } from './fakes.js';
import { make } from './harness.js';

const progress = (job: string, p: number) => envelope('render.job.progress.v1', { job_id: job, progress: p });

function record(client: ReturnType<typeof make>['client']) {
  const got: [string, boolean][] = [];
  const snapshots: Snapshot[] = [];
  client.onEvent((e: RealtimeEvent, info: EventInfo) => got.push([e.event_id, info.snapshot]));
  client.onSnapshot((s) => snapshots.push(s));
  return { got, snapshots };
}

describe('snapshots over WebSocket', () => {
  it('delivers each event marked snapshot, then onSnapshot, without moving the resume position', async () => {
    const { client } = make({}, undefined, { listen: false });
    const { got, snapshots } = record(client);
    const jobs: [string, boolean][] = [];
    client.onJob('j1', (e, info) => jobs.push([e.event_type, info.snapshot]));
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    const live = progress('j1', 10);
    ws.receive(live);
    const a = progress('j1', 40);
    const b = envelope('render.job.completed.v1', { job_id: 'j2' });
    ws.receive({ type: 'snapshot', events: [a, b, { type: 'junk' }], truncated: false });
    expect(got).toEqual([
      [live.event_id, false],
      [a.event_id, true],
      [b.event_id, true],
    ]);
    expect(jobs).toEqual([
      ['render.job.progress.v1', false],
      ['render.job.progress.v1', true],
    ]);
    expect(snapshots).toEqual([{ events: [a, b], truncated: false }]);
    expect(client.lastEventId).toBe(live.event_id);
    // The live stream never repeats a state the snapshot carried.
    ws.receive(a);
    expect(got).toHaveLength(3);
  });

  it('a snapshot after resync delivers states seen before again, marked', async () => {
    const { client } = make({}, undefined, { listen: false });
    const { got, snapshots } = record(client);
    let resyncs = 0;
    client.onResync(() => resyncs++);
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    const seen = progress('j1', 50);
    ws.receive(seen);
    ws.receive({ type: 'resync' });
    ws.receive({ type: 'snapshot', events: [seen, progress('j2', 5)], truncated: true });
    expect(resyncs).toBe(1);
    expect(got.map(([, s]) => s)).toEqual([false, true, true]);
    expect(got[1]![0]).toBe(seen.event_id);
    expect(snapshots[0]!.truncated).toBe(true);
  });

  it('on() keeps its one-argument listeners, and skips snapshot events without their fields', async () => {
    const { client, errors } = make({}, undefined, { listen: false });
    const seen: number[] = [];
    client.on('render.job.progress.v1', (e) => seen.push(e.data.progress));
    await flush();
    const ws = FakeWebSocket.last();
    ws.open();
    ws.receive({ type: 'snapshot', events: [progress('j1', 7), envelope('render.job.progress.v1', { job_id: 'j1' })], truncated: false });
    expect(seen).toEqual([7]);
    expect(errors.map((e) => e.code)).toEqual(['invalid_event']);
  });
});

describe('snapshots over SSE', () => {
  it('event: snapshot delivers marked events, also after a resync', async () => {
    const { client } = make({ transport: 'sse' }, undefined, { listen: false });
    const { got, snapshots } = record(client);
    await flush();
    const es = FakeEventSource.last();
    es.open();
    const live = progress('j1', 20);
    es.receive(live);
    const state = progress('j1', 30);
    es.emit('snapshot', { type: 'snapshot', events: [state], truncated: false });
    es.emit('resync', { type: 'resync' });
    es.emit('snapshot', { type: 'snapshot', events: [state], truncated: false });
    expect(got).toEqual([
      [live.event_id, false],
      [state.event_id, true],
      [state.event_id, true],
    ]);
    expect(snapshots).toHaveLength(2);
    expect(client.lastEventId).toBe(live.event_id);
  });
});
