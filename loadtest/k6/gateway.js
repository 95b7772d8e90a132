// k6 load test for realtime-gateway's WebSocket endpoint.
//
// Every VU opens CONNS_PER_VU authenticated WebSockets (default 1), one per user of the plan
// that `loadgen publish --plan-out` wrote (tokens are minted there; k6 cannot publish to
// RabbitMQ, so the same loadgen process publishes once all clients are connected). Each
// client counts the events of its user, rejects duplicates and events of other users, and
// records publish→receipt latency from `data.sent_us`. Thresholds fail the run (k6 exits
// 99) on any loss, duplicate, misrouted event or WebSocket error, or when p(99) latency
// exceeds P99_MS.
//
// Run it through loadtest/k6/run.sh, which builds, starts the gateway and the publisher,
// and passes:
//   PLAN          path of the plan JSON (required)
//   HOLD_S        longest a client stays connected waiting for its events   [60]
//   CONNS_PER_VU  WebSockets per VU (k6 VUs are heavy: use 10+ for 10k)    [1]
//   P99_MS        p(99) latency threshold, ms                               [50]

import { SharedArray } from 'k6/data';
import { Counter, Rate, Trend } from 'k6/metrics';
import { setTimeout, clearTimeout } from 'k6/timers';
import { WebSocket } from 'k6/experimental/websockets';

if (!__ENV.PLAN) {
  throw new Error('set PLAN to the file written by `loadgen publish --plan-out` (see run.sh)');
}

// Shared read-only across VUs: one copy of the plan, not one per VU.
const users = new SharedArray('users', () => JSON.parse(open(__ENV.PLAN)).users);
const meta = new SharedArray('meta', () => {
  const p = JSON.parse(open(__ENV.PLAN));
  return [{ run: p.run, ws_url: p.ws_url, events: p.events }];
})[0];

const HOLD_MS = Number(__ENV.HOLD_S || 60) * 1000;
const PER_VU = Math.max(1, Number(__ENV.CONNS_PER_VU || 1));
const P99_MS = Number(__ENV.P99_MS || 50);
const VUS = Math.ceil(users.length / PER_VU);

const latency = new Trend('delivery_latency', true);
const received = new Counter('events_received');
const expectedCount = new Counter('events_expected');
const lost = new Counter('events_lost');
const duplicated = new Counter('events_duplicated');
const misrouted = new Counter('events_misrouted');
const otherRuns = new Counter('events_other_runs');
const wsErrors = new Counter('ws_errors');
const complete = new Rate('clients_complete');

export const options = {
  scenarios: {
    clients: {
      executor: 'per-vu-iterations',
      vus: VUS,
      iterations: 1,
      maxDuration: `${Math.ceil(HOLD_MS / 1000) + 30}s`,
    },
  },
  thresholds: {
    delivery_latency: [`p(99)<${P99_MS}`],
    events_lost: ['count==0'],
    events_duplicated: ['count==0'],
    events_misrouted: ['count==0'],
    ws_errors: ['count==0'],
    clients_complete: ['rate==1'],
  },
  summaryTrendStats: ['avg', 'min', 'med', 'p(90)', 'p(99)', 'max', 'count'],
};

function client(me) {
  const expected = me.expected;
  const seen = new Set();
  let done = false;
  let timer = null;
  const ws = new WebSocket(`${meta.ws_url}?access_token=${me.token}`);

  const finish = (why) => {
    if (done) return;
    done = true;
    if (timer !== null) clearTimeout(timer);
    expectedCount.add(expected);
    lost.add(Math.max(0, expected - seen.size));
    duplicated.add(0);
    misrouted.add(0);
    wsErrors.add(0);
    complete.add(seen.size >= expected);
    if (seen.size < expected) {
      console.warn(`${me.user}: ${seen.size}/${expected} events when ${why}`);
    }
    ws.close();
  };

  ws.onmessage = (e) => {
    const now = Date.now();
    let m;
    try {
      m = JSON.parse(e.data);
    } catch (_) {
      return;
    }
    if (!m.event_id) return; // gateway control message, e.g. {"type":"resync"}
    if (!m.data || m.data.run !== meta.run) {
      otherRuns.add(1);
      return;
    }
    if (m.user_id !== me.user || m.tenant_id !== me.tenant) {
      misrouted.add(1);
      return;
    }
    if (seen.has(m.data.seq)) {
      duplicated.add(1);
      return;
    }
    seen.add(m.data.seq);
    received.add(1);
    latency.add(now - m.data.sent_us / 1000);
    if (expected > 0 && seen.size >= expected) finish('complete');
  };
  ws.onerror = (e) => {
    wsErrors.add(1);
    console.error(`${me.user}: websocket error: ${e.error}`);
    finish('error');
  };
  ws.onclose = () => finish('closed by the gateway');
  // A client whose events never all arrive gives up at HOLD_S; one that expects none
  // stays for the whole window (a stray event would then count as misrouted).
  timer = setTimeout(() => finish(`no more events after ${HOLD_MS / 1000} s`), HOLD_MS);
}

export default function () {
  const first = (__VU - 1) * PER_VU;
  for (let i = first; i < Math.min(first + PER_VU, users.length); i++) {
    client(users[i]);
  }
}
