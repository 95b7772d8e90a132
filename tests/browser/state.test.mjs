// Live state in examples/nextjs-studio against a real gateway and RabbitMQ: a job page
// opened mid-render shows the job's progress from the gateway's snapshot on its first live
// paint, before any new event is published; a finished job shows `completed` (over SSE);
// and a job page's connection carries its job only (and notifications, for the bell).

import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { after, before, test } from 'node:test';

import {
  ROOT,
  catalogEvent,
  launchBrowser,
  publishEvents,
  screenshot,
  startGateway,
  startStudio,
  unique,
  until,
} from './harness.mjs';

const cleanups = [];
let browser;
const WHO = { tenant: 'tenant-a', user: 'user-1' };

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

async function setup(name, studioEnv = {}) {
  const exchange = unique(name);
  const gw = await startGateway({ exchange });
  cleanups.push(() => gw.stop());
  const studio = await startStudio({ REALTIME_URL: gw.url, ...studioEnv });
  cleanups.push(() => studio.stop());
  return { exchange, gw, studio };
}

/** Signs in, then opens `/jobs/<job>`, recording the frames of the job page's sockets. */
async function openJob(studio, job) {
  const context = await browser.newContext();
  const page = await context.newPage();
  page.on('pageerror', (e) => console.error('page error:', e));
  await page.goto(`${studio.url}/signin?tenant=${WHO.tenant}&user=${WHO.user}`);
  const sockets = [];
  page.on('websocket', (ws) => {
    if (!ws.url().includes('keys=')) return; // the home page's socket, from the sign-in
    const socket = { url: ws.url(), frames: [] };
    sockets.push(socket);
    ws.on('framereceived', (f) => socket.frames.push(String(f.payload)));
  });
  await page.goto(`${studio.url}/jobs/${job}`);
  return { page, sockets, close: () => context.close() };
}

const testId = (page, id) => page.locator(`[data-testid="${id}"]`);
const jobId = () => `job-${Math.random().toString(16).slice(2, 10)}`;

test('a job page opened mid-render shows its progress from the snapshot, and receives its job only', async () => {
  const { exchange, gw, studio } = await setup('studio-state');
  const job = jobId();
  const other = jobId();
  await publishEvents(exchange, [
    catalogEvent('render.job.queued.v1', WHO, { job_id: job }),
    catalogEvent('render.job.started.v1', WHO, { job_id: job }),
    catalogEvent('render.job.progress.v1', WHO, { job_id: job, progress: 40, frame: 160, total_frames: 400 }),
    catalogEvent('render.job.progress.v1', WHO, { job_id: other, progress: 70 }),
  ]);
  await until('the gateway holds both jobs', async () => (await gw.metric('gateway_state_keys')) >= 2);

  const { page, sockets, close } = await openJob(studio, job);
  await until('progress shown', async () => (await testId(page, 'job-status').textContent()) === 'progress');
  assert.equal(await testId(page, 'progress').getAttribute('value'), '40');
  assert.match(await testId(page, 'job').textContent(), /frame 160 of 400/);
  // Nothing was published since the page opened: this came from the snapshot, and no
  // earlier state (queued, started) was painted on the way.
  assert.equal(await testId(page, 'job').getAttribute('data-shown'), 'unknown:0 progress:40');
  assert.equal(sockets.length, 1, `one socket for the job page: ${sockets.map((s) => s.url)}`);
  const url = new URL(sockets[0].url);
  assert.equal(url.searchParams.get('keys'), job);
  assert.equal(url.searchParams.get('snapshot'), '1');
  const snapshot = sockets[0].frames.map((f) => JSON.parse(f)).find((m) => m.type === 'snapshot');
  assert.ok(snapshot, 'a snapshot frame arrived');
  assert.deepEqual(
    snapshot.events.map((e) => [e.event_type, e.data.job_id]),
    [['render.job.progress.v1', job]],
  );
  await screenshot(page, 'studio-job-mid-render');

  // Live: the other job's progress is published first; once this job's next progress and
  // the notification have arrived, the other's would have too, had the gateway sent it.
  await publishEvents(exchange, [
    catalogEvent('render.job.progress.v1', WHO, { job_id: other, progress: 90 }),
    catalogEvent('render.job.progress.v1', WHO, { job_id: job, progress: 60, frame: 240, total_frames: 400 }),
    catalogEvent('notification.created.v1', WHO, { notification_id: `n-${job}`, title: 'Halfway', job_id: job }),
  ]);
  await until('progress 60', async () => (await testId(page, 'progress').getAttribute('value')) === '60');
  await until('the bell rings', async () => (await testId(page, 'bell').textContent()) === '1');
  const leaked = sockets.flatMap((s) => s.frames).filter((f) => f.includes(other));
  assert.deepEqual(leaked, [], 'the job page received another job');
  await close();
});

test('a finished job shows completed from the snapshot (SSE)', async () => {
  const { exchange, gw, studio } = await setup('studio-state-done', { REALTIME_TRANSPORT: 'sse' });
  const job = jobId();
  await publishEvents(exchange, [
    catalogEvent('render.job.queued.v1', WHO, { job_id: job }),
    catalogEvent('render.job.started.v1', WHO, { job_id: job }),
    catalogEvent('render.job.progress.v1', WHO, { job_id: job, progress: 80 }),
    catalogEvent('render.job.completed.v1', WHO, {
      job_id: job,
      output_url: `https://cdn.flatrender.example/renders/${job}.mp4`,
    }),
  ]);
  await until('the gateway holds the job', async () => (await gw.metric('gateway_state_keys')) >= 1);

  const { page, close } = await openJob(studio, job);
  await until('completed shown', async () => (await testId(page, 'job-status').textContent()) === 'completed');
  assert.equal(await testId(page, 'connection').getAttribute('data-transport'), 'sse');
  assert.equal(await testId(page, 'progress').getAttribute('value'), '100');
  assert.equal(await testId(page, 'job').getAttribute('data-shown'), 'unknown:0 completed:100');
  assert.equal(
    await page.locator('[data-testid="job"] a').first().getAttribute('href'),
    `https://cdn.flatrender.example/renders/${job}.mp4`,
  );
  await screenshot(page, 'studio-job-completed');
  await close();
});
