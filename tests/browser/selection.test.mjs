// The browser client's subscriptions follow mounted hooks: examples/nextjs-studio's /focus
// page (connection badge and bell, and a progress panel the user opens) in headless
// Chromium against a real gateway and RabbitMQ. With only the bell mounted the gateway
// sends notifications and filters render jobs out (gateway_events_filtered_total);
// opening the panel selects render jobs in band on the same WebSocket, and closing it
// takes them back. Over SSE, opening the panel reopens the stream with the new `types=`
// and its last event id, and nothing is lost.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import { ROOT, gatewayHasAuthCheck, launchBrowser, publishSequence, screenshot, startGateway, startStudio, unique, until } from './harness.mjs';

const cleanups = [];
let browser;

before(async () => {
  assert.ok(
    existsSync(path.join(ROOT, 'examples', 'nextjs-studio', '.next', 'BUILD_ID')),
    'examples/nextjs-studio is not built: run `npm ci && npm run build` there (scripts/test.sh does)',
  );
  browser = await launchBrowser();
  cleanups.push(() => browser.close());
});

after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

const testId = (page, id) => page.locator(`[data-testid="${id}"]`);
const bell = (page) => testId(page, 'bell').textContent();
const FILTERED = 'gateway_events_filtered_total';
const RENDER_EVENTS = 6; // queued, started, three progress ticks, completed: publishSequence's render part

/**
 * The studio's /focus page for a signed-in user, recording its WebSockets, what it sent
 * on them, and the selection the gateway last confirmed (`types=` of the URL, then each
 * `subscribed` answer).
 */
async function openFocus(gw, env = {}) {
  const s = await startStudio({ REALTIME_URL: gw.url, ...env });
  cleanups.push(() => s.stop());
  const context = await browser.newContext();
  cleanups.push(() => context.close());
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  const seen = { sockets: [], sent: [], confirmed: null, streams: [] };
  page.on('websocket', (ws) => {
    const types = new URL(ws.url()).searchParams.get('types');
    seen.sockets.push(ws.url());
    seen.confirmed = types === null ? ['#'] : types.split(',');
    ws.on('framesent', ({ payload }) => seen.sent.push(JSON.parse(String(payload))));
    ws.on('framereceived', ({ payload }) => {
      const msg = JSON.parse(String(payload));
      if (msg.type === 'subscribed') seen.confirmed = msg.types;
    });
  });
  page.on('request', (r) => {
    if (new URL(r.url()).pathname === '/sse') seen.streams.push(r.url());
  });
  // Signed in without visiting the home page, whose own connection would show here too.
  const signin = await context.request.get(`${s.url}/signin?tenant=tenant-a&user=user-1`, { maxRedirects: 0 });
  assert.equal(signin.status(), 303);
  await page.goto(`${s.url}/focus`);
  await until('connection open', async () => (await testId(page, 'connection').textContent()) === 'open', 30000);
  return { page, seen };
}

const selections = (sent) => sent.filter((m) => m.type === 'subscribe' || m.type === 'unsubscribe');
const sameSet = (a, b) => a.length === b.length && a.every((x) => b.includes(x));

test('WebSocket: the bell alone gets notifications only; opening progress selects render jobs in band', async () => {
  const exchange = unique('selection-ws');
  const gw = await startGateway({ exchange });
  cleanups.push(() => gw.stop());
  assert.ok(await gatewayHasAuthCheck(gw.url));
  const { page, seen } = await openFocus(gw);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'websocket');
  await until('gateway holds notification.#', async () => sameSet(seen.confirmed ?? [], ['notification.#']));

  // Only the bell is mounted: the render events are filtered out at the gateway.
  const first = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  assert.equal(first.length, RENDER_EVENTS + 1);
  await until('bell shows 1', async () => (await bell(page)) === '1');
  await until('render events filtered', async () => (await gw.metric(FILTERED)) === RENDER_EVENTS);
  assert.equal(await testId(page, 'job').count(), 0);

  // The panel mounts LatestJob: render.job.# is added on the same socket.
  await testId(page, 'toggle-progress').click();
  await until('gateway holds render jobs too', async () =>
    sameSet(seen.confirmed, ['notification.#', 'render.job.#']));
  assert.deepEqual(selections(seen.sent).at(-1), { type: 'subscribe', types: ['render.job.#'] });
  const second = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('progress 100', async () => (await testId(page, 'progress').getAttribute('value')) === '100');
  await until('bell shows 2', async () => (await bell(page)) === '2');
  assert.equal(await testId(page, 'job-status').textContent(), 'completed');
  assert.equal(await gw.metric(FILTERED), RENDER_EVENTS, 'nothing of the second render was filtered');
  assert.equal(seen.sockets.length, 1, 'never reconnected');
  await screenshot(page, 'selection-progress-open');

  // Closing the panel takes render jobs back.
  await testId(page, 'toggle-progress').click();
  await until('gateway holds notification.# again', async () => sameSet(seen.confirmed, ['notification.#']));
  assert.deepEqual(selections(seen.sent).at(-1), { type: 'unsubscribe', types: ['render.job.#'] });
  await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 3', async () => (await bell(page)) === '3');
  await until('third render filtered', async () => (await gw.metric(FILTERED)) === 2 * RENDER_EVENTS);
  assert.equal(seen.sockets.length, 1);
  assert.equal(second.length, first.length);
  await page.close();
});

test('SSE: opening progress opens a stream with the new types beside the old one', async () => {
  const exchange = unique('selection-sse');
  const gw = await startGateway({ exchange });
  cleanups.push(() => gw.stop());
  const { page, seen } = await openFocus(gw, { REALTIME_TRANSPORT: 'sse' });
  assert.equal(seen.sockets.length, 0);
  await until('stream selects notifications', async () =>
    seen.streams.length === 1 && new URL(seen.streams[0]).searchParams.get('types') === 'notification.#');

  const first = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  await until('render events filtered', async () => (await gw.metric(FILTERED)) === RENDER_EVENTS);

  await testId(page, 'toggle-progress').click();
  await until('a second stream', async () => seen.streams.length === 2);
  const reopened = new URL(seen.streams[1]).searchParams;
  assert.equal(reopened.get('types'), 'notification.#,render.job.#');
  // Make-before-break: the first stream served until the second was open, so the second
  // needs no resume (and a quiet page is never told to resync by a handover).
  assert.equal(reopened.get('last_event_id'), null);
  assert.equal(reopened.get('access_token'), null, 'the token rides in Authorization, not the URL');
  assert.equal(await testId(page, 'connection').textContent(), 'open');

  await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('progress 100', async () => (await testId(page, 'progress').getAttribute('value')) === '100');
  await until('bell shows 2', async () => (await bell(page)) === '2');
  assert.equal(await gw.metric(FILTERED), RENDER_EVENTS);
  assert.equal(seen.streams.length, 2);
  await page.close();
});
