// The studio in tabs the way people leave them (issue 26): a tab hidden for ten minutes
// with a healthy gateway, and a page whose user is signed out, in headless Chromium
// against a real gateway and RabbitMQ.
//
// What is real and what is emulated: the gateway, the broker, the sockets and the token
// endpoint are real. Headless Chromium keeps a page visible and does not throttle its
// timers, so the tests emulate both. Visibility: `document.visibilityState` is overridden
// in the page and `visibilitychange` dispatched, which is all the client reads. Throttled
// timers: Playwright's clock (installed before the page loads) jumps the page's clock a
// minute at a time and fires each due timer once per jump, which is what Chrome's
// intensive throttling of a tab hidden for five minutes (one timer wake-up a minute), or
// a laptop waking from sleep, looks like to the page's JavaScript. Between jumps real time
// passes, so pings and pongs cross the real network. Ten jumps stand for ten minutes.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  ROOT,
  launchBrowser,
  publishSequence,
  screenshot,
  sleep,
  startGateway,
  startStudio,
  unique,
  until,
} from './harness.mjs';

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
const connection = (page) => testId(page, 'connection').textContent();
const isTokenRequest = (url) => new URL(url).pathname === '/api/realtime-token';

/** The studio page in a fresh context with the page clock installed, recording requests, sockets and frames. */
async function openStudio(s, { signIn }) {
  const context = await browser.newContext();
  cleanups.push(() => context.close());
  const page = await context.newPage();
  const seen = { requests: [], sockets: [], sent: [], console: [] };
  page.on('pageerror', (e) => console.error('page error:', e));
  page.on('console', (m) => seen.console.push(m.text()));
  page.on('request', (r) => seen.requests.push(r.url()));
  page.on('websocket', (ws) => {
    seen.sockets.push(ws.url());
    ws.on('framesent', ({ payload }) => seen.sent.push(JSON.parse(String(payload))));
  });
  await page.clock.install();
  if (signIn) {
    const r = await context.request.get(`${s.url}/signin?tenant=tenant-a&user=user-1`, { maxRedirects: 0 });
    assert.equal(r.status(), 303);
  }
  await page.goto(`${s.url}/`);
  return { page, seen };
}

/** Emulated page visibility: what the client reads (see the top of this file). */
async function setHidden(page, hidden) {
  await page.evaluate((h) => {
    Object.defineProperty(document, 'visibilityState', { configurable: true, get: () => (h ? 'hidden' : 'visible') });
    Object.defineProperty(document, 'hidden', { configurable: true, get: () => h });
    document.dispatchEvent(new Event('visibilitychange'));
  }, hidden);
}

/** One throttled minute: the page's clock jumps 60 s and each due timer fires once; then real time for the network. */
async function throttledMinute(page) {
  await page.clock.fastForward(60_000);
  await sleep(1_500);
}

test('a tab hidden for ten minutes with a healthy gateway: no reconnect, no token request, still live', async () => {
  const exchange = unique('tabs-hidden');
  const gw = await startGateway({ exchange });
  cleanups.push(() => gw.stop());
  // A token that outlives the ten minutes: its in-band refresh is covered elsewhere.
  const s = await startStudio({ REALTIME_URL: gw.url, REALTIME_TOKEN_TTL_SECS: '3600' });
  cleanups.push(() => s.stop());
  const { page, seen } = await openStudio(s, { signIn: true });
  await until('connection open', async () => (await connection(page)) === 'open', 30000);
  const tokensBefore = seen.requests.filter(isTokenRequest).length;
  assert.equal(seen.sockets.length, 1);

  await setHidden(page, true);
  for (let minute = 0; minute < 10; minute++) await throttledMinute(page);

  // Each late tick asks with a ping (one that comes while the previous check still waits
  // for its deadline leaves it to that check): at least one every other minute.
  const pings = seen.sent.filter((m) => m.type === 'ping').length;
  assert.ok(pings >= 5, `the hidden tab kept checking its connection (${pings} pings)`);
  assert.equal(seen.sockets.length, 1, 'no reconnect');
  assert.equal(seen.requests.filter(isTokenRequest).length, tokensBefore, 'no token request');
  assert.equal(await connection(page), 'open');
  assert.equal(await gw.metric('gateway_connections{transport="ws"}'), 1);
  assert.equal(await gw.metric('gateway_connections_accepted_total{transport="ws"}'), 1, 'the gateway saw one connection');

  // Shown again: a ping, not a reconnect; and the same socket still delivers.
  await setHidden(page, false);
  await sleep(1_000);
  assert.equal(seen.sockets.length, 1);
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('events shown', async () =>
    (await page.locator('[data-testid="events"] li').allTextContents()).join() === ids.join());
  assert.equal(seen.sockets.length, 1);
  await screenshot(page, 'tabs-hidden-ten-minutes');
});

test('a signed-out page asks for a token a few times, says why, and waits for focus', async () => {
  const exchange = unique('tabs-signed-out');
  const gw = await startGateway({ exchange });
  cleanups.push(() => gw.stop());
  const s = await startStudio({ REALTIME_URL: gw.url });
  cleanups.push(() => s.stop());
  const { page, seen } = await openStudio(s, { signIn: false });
  await until('error shown', async () => (await testId(page, 'error').count()) === 1);

  // Ten minutes, throttled or not: the backoff's timers all fire within them.
  for (let minute = 0; minute < 10; minute++) await throttledMinute(page);
  const asked = seen.requests.filter(isTokenRequest).length;
  assert.ok(asked <= 3, `at most a few token requests in ten minutes, got ${asked}`);
  assert.equal(await connection(page), 'unauthorized');
  assert.equal(await testId(page, 'error').getAttribute('data-code'), 'token_error');
  assert.match(await testId(page, 'error').textContent(), /Signed out/);
  assert.deepEqual(seen.sockets, []);
  assert.ok(!seen.requests.some((u) => u.startsWith(gw.url)), 'nothing sent to the gateway');
  await screenshot(page, 'tabs-signed-out');

  // Focus (the user is back, perhaps signed in elsewhere) asks once more.
  await page.evaluate(() => window.dispatchEvent(new Event('focus')));
  await until('asked again on focus', async () => seen.requests.filter(isTokenRequest).length === asked + 1);
  await sleep(1_000);
  assert.equal(seen.requests.filter(isTokenRequest).length, asked + 1);
});
