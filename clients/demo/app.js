// The demo page: a render job card whose progress bar moves live, a notification bell,
// and a connection badge, all driven by @flatrender/realtime-client (built into ./lib by
// the quick start). The token comes from the fragment, #token=… (mint one with
// `cargo run --example demo -- url`): a fragment never reaches a server, a Referer or
// the request logs, and the page removes it from the address bar at once.

import { createRealtimeClient, isCatalogEvent, safeHttpUrl } from './lib/index.js';
import { remember } from './bounded.js';

const fragment = new URLSearchParams(location.hash.slice(1));
const token = fragment.get('token');
if (token !== null) history.replaceState(null, '', location.pathname + location.search);
const params = new URLSearchParams(location.search);
const $ = (id) => document.getElementById(id);

/** How many event and job ids the page keeps for the tests (and the console). */
const MAX_IDS = 500;
// What the end-to-end tests read. Ids and counters only: never the token or the client.
const demo = (window.demo = { eventIds: [], jobIds: [], notifications: 0, resyncs: 0, errors: [] });

const STATUS = {
  'render.job.queued.v1': 'queued',
  'render.job.started.v1': 'started',
  'render.job.progress.v1': 'rendering',
  'render.job.completed.v1': 'completed',
  'render.job.failed.v1': 'failed',
  'render.job.cancelled.v1': 'cancelled',
};

function showJob(event) {
  const jobId = event.data.job_id;
  remember(demo.jobIds, jobId, MAX_IDS, true);
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
    // Producer data, not a trusted link: only http(s) is shown (as text, never as href).
    const output = safeHttpUrl(event.data.output_url);
    if (output) $('job-output').textContent = `· ${output}`;
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
  while ($('notifications').children.length > 20) $('notifications').lastElementChild.remove();
}

$('bell').addEventListener('click', () => {
  demo.notifications = 0;
  $('bell-count').textContent = '0';
  $('bell-count').dataset.count = '0';
});

/** A number from the address bar, or `fallback` unless it is finite and above zero. */
function positiveParam(name, fallback) {
  const value = Number(params.get(name));
  return params.has(name) && Number.isFinite(value) && value > 0 ? value : fallback;
}

function showError(error) {
  remember(demo.errors, error.code, 50);
  $('error').textContent = `${error.code}: ${error.message}`;
}

if (!token) {
  $('connection').textContent = 'no token: open the address `cargo run --example demo -- url` prints';
  $('connection').dataset.state = 'closed';
} else {
  const transport = params.get('transport');
  const client = createRealtimeClient({
    url: location.origin,
    getToken: () => token,
    transport: transport === 'websocket' || transport === 'sse' ? transport : 'auto',
    tokenTransport: params.get('tokenTransport') === 'query' ? 'query' : 'protocol',
    backoff: { initialMs: 250, maxMs: positiveParam('maxBackoffMs', 5000) },
    wsRetryIntervalMs: positiveParam('wsRetryMs', 5 * 60_000),
    onStateChange: (state) => {
      $('connection').textContent = state;
      $('connection').dataset.state = state;
      $('transport').textContent = client.transport ?? '-';
      if (state === 'open') $('error').textContent = '';
    },
    onError: showError,
    onResync: () => {
      demo.resyncs += 1;
      $('resync').dataset.shown = 'true';
    },
  });
  // A tab on SSE moves back to WebSocket without a state change: show the live transport.
  setInterval(() => {
    $('transport').textContent = client.transport ?? '-';
  }, 1000);
  client.onEvent((event) => {
    remember(demo.eventIds, event.event_id, MAX_IDS);
    if (!isCatalogEvent(event)) return; // unknown type, or data without its declared fields
    if (event.event_type.startsWith('render.job.')) showJob(event);
    if (event.event_type.startsWith('notification.')) showNotification(event);
  });
}
