// A page's native EventSource loses its connection when the gateway instance it uses is
// restarted; after EventSource's own automatic reconnect (sending Last-Event-ID by itself)
// it shows every event published meanwhile, served by the other instance's history.

import assert from 'node:assert/strict';
import { once } from 'node:events';
import http from 'node:http';
import { after, test } from 'node:test';

import {
  launchBrowser,
  publishSequence,
  screenshot,
  startBalancer,
  startGateway,
  token,
  unique,
  until,
} from './harness.mjs';

const PAGE = (gateway, tok) => `<!doctype html>
<meta charset="utf-8">
<title>EventSource resume</title>
<h1>Events</h1>
<p>state: <span id="state">connecting</span>, reconnects: <span id="reconnects">0</span></p>
<ol id="events"></ol>
<script>
  // Plain EventSource, no library: reconnecting and Last-Event-ID are the browser's own.
  const es = new EventSource(${JSON.stringify(gateway)} + '/sse?access_token=' + ${JSON.stringify(tok)});
  let opened = 0;
  window.receivedIds = [];
  es.onopen = () => {
    document.getElementById('state').textContent = 'open';
    if (opened++ > 0) document.getElementById('reconnects').textContent = String(opened - 1);
  };
  es.onerror = () => { document.getElementById('state').textContent = 'reconnecting'; };
  es.onmessage = (m) => {
    const ev = JSON.parse(m.data);
    window.receivedIds.push(m.lastEventId);
    const li = document.createElement('li');
    li.textContent = ev.event_type + ' ' + (ev.data.progress ?? '') + ' ' + m.lastEventId;
    document.getElementById('events').appendChild(li);
  };
  es.addEventListener('resync', () => { window.resynced = true; });
</script>`;

const cleanups = [];
after(async () => {
  for (const c of cleanups.reverse()) await c().catch(() => {});
});

test('native EventSource resumes on the other instance after a restart', async () => {
  const exchange = unique('browser-resume');
  const tenant = 'tenant-browser';
  const user = 'user-browser';

  // The page is served from its own origin, as the studio is: /sse answers with CORS.
  const pageServer = http.createServer();
  pageServer.listen(0, '127.0.0.1');
  await once(pageServer, 'listening');
  cleanups.push(async () => pageServer.close());
  const pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;

  const env = { GATEWAY_ALLOWED_ORIGINS: pageOrigin, GATEWAY_SSE_RETRY_MS: '500' };
  const a = await startGateway({ exchange, env });
  cleanups.push(() => a.stop());
  const b = await startGateway({ exchange, env });
  cleanups.push(() => b.stop());
  const lb = await startBalancer([a.port, b.port]);
  cleanups.push(() => lb.close());

  const tok = await token(tenant, user);
  pageServer.on('request', (req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(PAGE(lb.url, tok));
  });

  const browser = await launchBrowser();
  cleanups.push(() => browser.close());
  const page = await browser.newPage();
  await page.goto(pageOrigin);
  await until('page connected', async () => (await page.textContent('#state')) === 'open');

  const before = await publishSequence({ exchange, tenant, user });
  await until('first events shown', async () =>
    (await page.evaluate(() => window.receivedIds.length)) === before.length);

  // Restart instance A while nothing can reconnect, publish meanwhile, then let the
  // browser's own retry reach instance B through the balancer.
  lb.pause();
  assert.equal(await a.stop(), 0, 'gateway A exits 0 on SIGTERM');
  await until('page lost its connection', async () => (await page.textContent('#state')) !== 'open');
  const meanwhile = await publishSequence({ exchange, tenant, user });
  // B has consumed them before the browser may come back.
  await until('B holds the events', async () => (await b.metric('gateway_events_received_total')) >= before.length + meanwhile.length);
  lb.resume();

  const all = [...before, ...meanwhile];
  await until('every event shown', async () =>
    (await page.evaluate(() => window.receivedIds.length)) >= all.length, 30000);
  const shown = await page.evaluate(() => window.receivedIds);
  assert.deepEqual(shown, all, 'every event exactly once, in order');
  assert.equal(await page.evaluate(() => window.resynced ?? false), false, 'no resync was needed');
  assert.ok((await b.metric('gateway_resumes_total{outcome="replayed"}')) >= 1, 'B replayed from its history');
  await screenshot(page, 'eventsource-resume');
});
