// The demo page: a render job card whose progress bar moves live, a notification bell,
// and a connection badge, all driven by @flatrender/realtime-client (built into ./lib by
// the quick start). The token comes from ?token= (mint one with
// `cargo run --example demo -- token --user <sub>`).

import { createRealtimeClient } from './lib/index.js';

const params = new URLSearchParams(location.search);
const token = params.get('token');
const $ = (id) => document.getElementById(id);

// What the end-to-end tests read; also handy in the console.
const demo = (window.demo = { eventIds: [], jobIds: [], notifications: 0, resyncs: 0 });

const STATUS = {
  'render.job.queued.v1': 'queued',
  'render.job.started.v1': 'started',
  'render.job.progress.v1': 'rendering',
  'render.job.completed.v1': 'completed',
  'render.job.failed.v1': 'failed',
  'render.job.cancelled.v1': 'cancelled',
};

function showJob(event) {
  const { job_id: jobId } = event.data ?? {};
  if (!jobId) return;
  if (!demo.jobIds.includes(jobId)) demo.jobIds.push(jobId);
  const card = $('job');
  // The card follows the most recent job.
  if (card.dataset.jobId !== jobId) {
    card.dataset.jobId = jobId;
    $('job-id').textContent = jobId;
    $('job-output').textContent = '';
    setProgress(0);
  }
  const status = STATUS[event.event_type] ?? 'unknown';
  card.dataset.status = status;
  $('job-status').textContent = status;
  if (event.event_type === 'render.job.progress.v1') setProgress(event.data.progress);
  if (event.event_type === 'render.job.completed.v1') {
    setProgress(100);
    if (event.data.output_url) $('job-output').textContent = `· ${event.data.output_url}`;
  }
}

function setProgress(p) {
  const value = Math.max(0, Math.min(100, Math.round(Number(p) || 0)));
  $('progress').style.width = `${value}%`;
  $('progress').setAttribute('aria-valuenow', String(value));
  $('progress-label').textContent = `${value} %`;
}

function showNotification(event) {
  if (event.event_type !== 'notification.created.v1') return;
  demo.notifications += 1;
  $('bell-count').textContent = String(demo.notifications);
  $('bell-count').dataset.count = String(demo.notifications);
  const li = document.createElement('li');
  li.textContent = event.data.title ?? event.data.kind ?? 'notification';
  $('notifications').prepend(li);
}

$('bell').addEventListener('click', () => {
  demo.notifications = 0;
  $('bell-count').textContent = '0';
  $('bell-count').dataset.count = '0';
});

if (!token) {
  $('connection').textContent = 'no token: add ?token=…';
  $('connection').dataset.state = 'closed';
} else {
  const client = createRealtimeClient({
    url: location.origin,
    getToken: () => token,
    transport: params.get('transport') ?? 'auto',
    backoff: { initialMs: 250, maxMs: Number(params.get('maxBackoffMs') ?? 5000) },
    onStateChange: (state) => {
      $('connection').textContent = state;
      $('connection').dataset.state = state;
      $('transport').textContent = client.transport ?? '-';
    },
    onResync: () => {
      demo.resyncs += 1;
      $('resync').dataset.shown = 'true';
    },
  });
  window.realtime = client;
  client.onEvent((event) => {
    demo.eventIds.push(event.event_id);
    if (event.event_type.startsWith('render.job.')) showJob(event);
    if (event.event_type.startsWith('notification.')) showNotification(event);
  });
}
