// examples/nextjs-studio (Next.js App Router, built by scripts/test.sh) in headless
// Chromium against real gateways and RabbitMQ: progress and the bell work with tokens
// minted by the app's route handler; a missing gateway URL and a signed-out user show as
// errors on the page and never leak a token; a gateway restart, and an outage while the
// page loads, are survived on WebSocket with resume; short tokens are refreshed in band at
// a sensible pace; the WebSocket URL carries no token.
//
// Token transport: the client sends the token in Sec-WebSocket-Protocol (and, over SSE, in
// Authorization); `gatewayHasAuthCheck` fails a test run against a gateway without that
// side of the protocol rather than quietly testing less.

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  ROOT,
  gatewayHasAuthCheck,
  launchBrowser,
  publishSequence,
  screenshot,
  startBalancer,
  startGateway,
  startStudio,
  token,
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

async function gateway(exchange, env = {}) {
  const gw = await startGateway({ exchange, env });
  cleanups.push(() => gw.stop());
  return gw;
}

/** The studio pointed at `realtimeUrl` (or at nothing), with the token transport this gateway supports. */
async function studio(realtimeUrl, { modern, env = {} } = {}) {
  const s = await startStudio({
    ...(realtimeUrl ? { REALTIME_URL: realtimeUrl } : {}),
    ...env,
  });
  cleanups.push(() => s.stop());
  return s;
}

/**
 * A fresh browser context (own cookies) on the studio, recording every request and
 * WebSocket the page makes.
 */
async function openStudio(s, { signIn = { tenant: 'tenant-a', user: 'user-1' } } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const seen = { requests: [], sockets: [] };
  page.on('pageerror', (e) => console.error('page error:', e));
  page.on('request', (r) => seen.requests.push(r.url()));
  page.on('websocket', (ws) => seen.sockets.push(ws.url()));
  const target = signIn ? `${s.url}/signin?tenant=${signIn.tenant}&user=${signIn.user}` : `${s.url}/`;
  await page.goto(target);
  return { page, seen, close: () => context.close() };
}

const testId = (page, id) => page.locator(`[data-testid="${id}"]`);
const connection = (page) => testId(page, 'connection').textContent();
const bell = (page) => testId(page, 'bell').textContent();
const eventIds = (page) => page.locator('[data-testid="events"] li').allTextContents();
const waitOpen = (page, ms = 30000) => until('connection open', async () => (await connection(page)) === 'open', ms);

/** Nothing the page sent to its own origin carried a token or went to /undefined. */
function assertNoLeak(studioUrl, requests, tok) {
  for (const url of requests.filter((u) => u.startsWith(studioUrl))) {
    assert.ok(!url.includes('access_token'), `token parameter sent to the studio: ${url}`);
    assert.ok(!url.includes('/undefined'), `request to /undefined: ${url}`);
    if (tok) assert.ok(!url.includes(tok), `token sent to the studio: ${url}`);
  }
}

test('progress and the bell, with tokens minted by the route handler', async () => {
  const exchange = unique('studio-progress');
  const gw = await gateway(exchange);
  const modern = await gatewayHasAuthCheck(gw.url);
  const s = await studio(gw.url, { modern });
  const { page, seen, close } = await openStudio(s);
  await waitOpen(page);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'websocket');

  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('progress 100', async () => (await testId(page, 'progress').getAttribute('value')) === '100');
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.equal(await testId(page, 'job-status').textContent(), 'completed');
  assert.deepEqual(await eventIds(page), ids);
  // output_url is on the allowed CDN origin: it became a link.
  const job = await testId(page, 'job').getAttribute('data-job');
  assert.equal(
    await page.locator('[data-testid="job"] a').getAttribute('href'),
    `https://cdn.flatrender.example/renders/${job}.mp4`,
  );
  assertNoLeak(s.url, seen.requests);
  await screenshot(page, 'studio-completed');
  await close();
});

test('a missing gateway URL is an error on the page, and the token is sent nowhere', async () => {
  const s = await studio(undefined, { modern: true });
  const { page, seen, close } = await openStudio(s);
  await until('error shown', async () => (await testId(page, 'error').count()) === 1);
  assert.equal(await testId(page, 'error').getAttribute('data-code'), 'invalid_options');
  assert.match(await testId(page, 'error').textContent(), /`url` is required/);
  assert.equal(await connection(page), 'closed');
  assert.deepEqual(seen.sockets, []);
  // The token endpoint is where the page learns the gateway URL (the pages are built
  // statically): it was asked, said no URL, and the token went nowhere.
  assert.ok(
    seen.requests.every((u) => u.startsWith(s.url)),
    `only the studio was asked: ${seen.requests.filter((u) => !u.startsWith(s.url))}`,
  );
  assertNoLeak(s.url, seen.requests);
  await screenshot(page, 'studio-missing-url');
  await close();
});

test('signed out: the 401 shows on the page, no token is sent, and signing in recovers', async () => {
  const exchange = unique('studio-signed-out');
  const gw = await gateway(exchange);
  const modern = await gatewayHasAuthCheck(gw.url);
  const s = await studio(gw.url, { modern });
  const { page, seen, close } = await openStudio(s, { signIn: null });
  assert.equal(await testId(page, 'who').textContent(), 'signed out');
  await until('error shown', async () => (await testId(page, 'error').count()) === 1);
  assert.equal(await testId(page, 'error').getAttribute('data-code'), 'token_error');
  assert.match(await testId(page, 'error').textContent(), /Signed out.*401/);
  assert.equal(await connection(page), 'unauthorized');
  await screenshot(page, 'studio-signed-out');
  // Let it retry a few times: still nothing goes to the gateway, the error body never
  // becomes a token, and the tab does not give up on WebSocket.
  await until('retried', async () => seen.requests.filter((u) => u.endsWith('/api/realtime-token')).length >= 3);
  assert.deepEqual(seen.sockets, []);
  assert.ok(!seen.requests.some((u) => u.startsWith(gw.url)), 'nothing sent to the gateway');

  // Signing in (in this tab, without a reload, as another tab would) is picked up when
  // the page next gets focus: after a few 401s the client stops polling and waits for it.
  await page.evaluate(async () => {
    await fetch('/signin?tenant=tenant-a&user=user-1', { redirect: 'manual' });
    window.dispatchEvent(new Event('focus'));
  });
  await waitOpen(page, 60000);
  assert.equal(await testId(page, 'error').count(), 0);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'websocket');
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.deepEqual(await eventIds(page), ids);
  assertNoLeak(s.url, seen.requests);
  await close();
});

test('a gateway restart is survived: the page reconnects on WebSocket and resumes', async () => {
  const exchange = unique('studio-restart');
  const a = await gateway(exchange);
  const b = await gateway(exchange);
  const lb = await startBalancer([a.port, b.port]);
  cleanups.push(() => lb.close());
  const modern = await gatewayHasAuthCheck(a.url);
  const s = await studio(lb.url, { modern });
  const { page, close } = await openStudio(s);
  await waitOpen(page);
  const first = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('first render shown', async () => (await bell(page)) === '1');

  // The instance goes away and nothing can reconnect while the next render is published:
  // it can only arrive by resume. The failed attempts meanwhile look like an outage (the
  // probe cannot reach the gateway either), so the tab stays on WebSocket.
  lb.pause();
  assert.equal(await a.stop(), 0);
  await until('page noticed', async () => (await connection(page)) !== 'open');
  const second = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('B holds the events', async () =>
    (await b.metric('gateway_events_received_total')) >= first.length + second.length);
  lb.resume();

  await waitOpen(page, 90000);
  await until('bell shows 2', async () => (await bell(page)) === '2', 30000);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'websocket');
  assert.deepEqual(await eventIds(page), [...first, ...second]);
  assert.ok((await b.metric('gateway_resumes_total{outcome="replayed"}')) >= 1);
  await screenshot(page, 'studio-after-restart');
  await close();
});

test('a gateway outage while the page loads does not move the tab to SSE', async () => {
  const exchange = unique('studio-outage-at-load');
  const gw = await gateway(exchange);
  const modern = await gatewayHasAuthCheck(gw.url);
  const lb = await startBalancer([gw.port]);
  cleanups.push(() => lb.close());
  lb.pause(); // a deploy: nothing answers while the page loads
  const s = await studio(lb.url, { modern });
  const { page, seen, close } = await openStudio(s);
  await until('several failed attempts', async () => seen.sockets.length >= 3, 60000);
  assert.notEqual(await connection(page), 'open');
  lb.resume();
  await waitOpen(page, 60000);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'websocket');
  assert.ok(!seen.requests.some((u) => u.includes('/sse')), 'no SSE attempt during an outage');
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.deepEqual(await eventIds(page), ids);
  await close();
});

test('a short-lived token is refreshed in band at half its life, not every few seconds', async () => {
  const exchange = unique('studio-refresh');
  const gw = await gateway(exchange);
  const modern = await gatewayHasAuthCheck(gw.url);
  // 20 s tokens: due at 10 s (the 60 s default margin is capped at half the lifetime).
  const s = await studio(gw.url, { modern, env: { REALTIME_TOKEN_TTL_SECS: '20' } });
  const { page, seen, close } = await openStudio(s);
  await waitOpen(page);
  const tokenFetches = () => seen.requests.filter((u) => u.endsWith('/api/realtime-token')).length;
  const start = tokenFetches();
  const t0 = Date.now();
  // Two refreshes take the socket past the first token's expiry: only in-band refreshes
  // can have kept it open. A slow machine only makes them later, never sooner.
  await until('two refreshes', async () => tokenFetches() - start >= 2, 90000);
  const elapsed = Date.now() - t0;
  assert.ok(elapsed >= 15000, `two refreshes within ${elapsed} ms: refreshing far too often`);
  await until('past the first expiry', async () => Date.now() - t0 > 22000, 30000);
  assert.equal(seen.sockets.length, 1, 'refreshed in band, never reconnected');
  assert.equal(await connection(page), 'open');
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.deepEqual(await eventIds(page), ids);
  await close();
});

test('the WebSocket URL carries no token (token in Sec-WebSocket-Protocol)', async (t) => {
  const exchange = unique('studio-no-token-url');
  const gw = await gateway(exchange);
  if (!(await gatewayHasAuthCheck(gw.url))) {
    t.skip('this gateway does not select the realtime-gateway.v1 subprotocol yet (issue 17, gateway side)');
    return;
  }
  const s = await studio(gw.url, { modern: true });
  const { page, seen, close } = await openStudio(s);
  await waitOpen(page);
  const tok = await page.evaluate(async () => (await (await fetch('/api/realtime-token')).json()).token);
  assert.ok(seen.sockets.length >= 1);
  for (const url of seen.sockets) {
    assert.ok(!url.includes('access_token'), `token parameter in ${url}`);
    assert.ok(!url.includes(tok.split('.')[0] + '.' + tok.split('.')[1]), `token in ${url}`);
  }
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.deepEqual(await eventIds(page), ids);
  await close();
});

test('a refused connection says why on the page (probe: too many connections)', async (t) => {
  const exchange = unique('studio-refused');
  const gw = await gateway(exchange, { GATEWAY_MAX_CONNECTIONS_PER_USER: '1' });
  if (!(await gatewayHasAuthCheck(gw.url))) {
    t.skip('this gateway has no GET /auth/check yet (issue 17, gateway side)');
    return;
  }
  const s = await studio(gw.url, { modern: true });
  const first = await openStudio(s);
  await waitOpen(first.page);
  const second = await openStudio(s);
  await until('refusal shown', async () => (await testId(second.page, 'error').getAttribute('data-code').catch(() => null)) === 'refused');
  assert.match(await testId(second.page, 'error').textContent(), /429/);
  // Not a blocked path: the second tab stays on WebSocket and gets in once the first leaves.
  await first.close();
  await waitOpen(second.page, 60000);
  assert.equal(await testId(second.page, 'connection').getAttribute('data-transport'), 'websocket');
  await second.close();
});

test('SSE works cross-origin with token auth, the studio origin unlisted, the token in no URL', async (t) => {
  const exchange = unique('studio-sse');
  const gw = await gateway(exchange);
  if (!(await gatewayHasAuthCheck(gw.url))) {
    t.skip('this gateway answers CORS on /sse only for listed origins (issue 17, gateway side)');
    return;
  }
  const s = await studio(gw.url, { modern: true, env: { REALTIME_TRANSPORT: 'sse' } });
  const { page, seen, close } = await openStudio(s);
  const consoleText = [];
  page.on('console', (m) => consoleText.push(m.text()));
  await waitOpen(page);
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'sse');
  const ids = await publishSequence({ exchange, tenant: 'tenant-a', user: 'user-1' });
  await until('bell shows 1', async () => (await bell(page)) === '1');
  assert.deepEqual(await eventIds(page), ids);
  // The stream is read with fetch and the token sent in Authorization: no URL (and so no
  // console error about one) carries it.
  const streams = seen.requests.filter((u) => new URL(u).pathname === '/sse');
  assert.ok(streams.length >= 1);
  for (const u of streams) assert.ok(!u.includes('access_token'), `token in the stream URL: ${u}`);
  assert.ok(!consoleText.some((t) => t.includes('access_token') || t.includes('eyJ')), 'no token in the console');
  await close();
});
