'use client';
// The live parts of the studio page, all from the provider's one client.
import { isRenderJobEvent, type RealtimeEvent } from '@flatrender/realtime-client';
import {
  INITIAL_RENDER_PROGRESS,
  reduceRenderProgress,
  useConnectionState,
  useNotifications,
  useConnectionStatus,
  useRealtimeClient,
  useRenderProgress,
  type RenderProgressState,
} from '@flatrender/realtime-client/react';
import { useEffect, useState } from 'react';

export function ConnectionBadge() {
  const state = useConnectionState();
  const client = useRealtimeClient();
  return (
    <span className="badge" data-state={state} data-testid="connection" data-transport={client?.transport ?? ''}>
      {state}
    </span>
  );
}

/**
 * Why nothing is live: a missing URL, a signed-out user, a refusal, an unreachable
 * gateway. Never silent, and gone once the page is live again (warnings such as a bad
 * event never show here: the page stays live).
 */
export function ErrorBanner() {
  const { error, retryAt } = useConnectionStatus();
  if (!error) return null;
  const signedOut = (error.code === 'token_error' || error.code === 'unauthorized') && error.status === 401;
  const title = signedOut ? 'Signed out' : error.severity === 'fatal' ? 'Live updates unavailable' : 'Reconnecting';
  return (
    <div className="error" role="alert" data-testid="error" data-code={error.code} data-severity={error.severity}>
      <strong>{title}</strong>: {error.message}
      {retryAt !== null && <span className="muted"> (next try at {new Date(retryAt).toLocaleTimeString()})</span>}
    </div>
  );
}

/**
 * The most recent render job. A page that knows its job id would call
 * `useRenderProgress(jobId, { allowedOrigins })`; this one follows whichever job shows up,
 * so it folds the events itself with the same reducer. Its listener names the types it
 * reads, so while it is mounted the gateway sends `render.job.#` (and stops when it goes).
 */
export function LatestJob({ allowedOrigins }: { allowedOrigins: string[] }) {
  const client = useRealtimeClient();
  const [job, setJob] = useState<{ id: string; state: RenderProgressState } | null>(null);
  const origins = allowedOrigins.join(' ');
  useEffect(() => {
    if (!client) return;
    const allowed = origins.split(' ');
    return client.onEvent(
      (event) => {
        if (!isRenderJobEvent(event)) return;
        setJob((prev) => {
          const base = prev?.id === event.data.job_id ? prev.state : INITIAL_RENDER_PROGRESS;
          return { id: event.data.job_id, state: reduceRenderProgress(base, event, { allowedOrigins: allowed }) };
        });
      },
      { types: 'render.job.#' },
    );
  }, [client, origins]);

  const state = job?.state ?? INITIAL_RENDER_PROGRESS;
  return (
    <section className="card" data-testid="job" data-status={state.status} data-job={job?.id ?? ''}>
      <h2>Render job <span className="muted">{job?.id ?? '(waiting for a render)'}</span></h2>
      <div className="muted">
        status: <span data-testid="job-status">{state.status}</span>
      </div>
      <progress data-testid="progress" value={state.progress} max={100} />
      <div className="muted">
        {Math.round(state.progress)} %{' '}
        {/* outputUrl passed the reducer's check: http(s) on the CDN only. */}
        {state.status === 'completed' && state.outputUrl && <a href={state.outputUrl}>Download</a>}
        {state.status === 'failed' && state.error}
      </div>
    </section>
  );
}

/**
 * A page that knows its job: `useRenderProgress` watches it, and the gateway's snapshot
 * brings its current state before any new event. `data-shown` lists the states painted
 * so far (what the end-to-end tests read to see that no earlier state was shown first).
 */
export function JobProgress({ jobId, allowedOrigins }: { jobId: string; allowedOrigins: string[] }) {
  const state = useRenderProgress(jobId, { allowedOrigins });
  const [shown, setShown] = useState<string[]>([]);
  const label = `${state.status}:${Math.round(state.progress)}`;
  useEffect(() => setShown((prev) => (prev[prev.length - 1] === label ? prev : [...prev, label])), [label]);
  return (
    <section className="card" data-testid="job" data-status={state.status} data-job={jobId} data-shown={shown.join(' ')}>
      <h2>Render job <span className="muted">{jobId}</span></h2>
      <div className="muted">
        status: <span data-testid="job-status">{state.status}</span>
        {state.frame !== undefined && state.totalFrames !== undefined && ` (frame ${state.frame} of ${state.totalFrames})`}
      </div>
      <progress data-testid="progress" value={state.progress} max={100} />
      <div className="muted">
        {Math.round(state.progress)} %{' '}
        {state.status === 'completed' && state.outputUrl && <a href={state.outputUrl}>Download</a>}
        {state.status === 'failed' && state.error}
      </div>
    </section>
  );
}

export function Bell() {
  const { items, unread, markAllRead } = useNotifications({ max: 20 });
  return (
    <button className="bell" onClick={markAllRead} title={items.map((n) => n.data.title ?? n.data.kind).join('\n')}>
      Notifications <span className="count" data-testid="bell" data-count={unread}>{unread}</span>
    </button>
  );
}

/**
 * A panel the user opens and closes: while closed, the page (header and bell) needs only
 * notifications, and the gateway sends nothing else; opening it selects render jobs on
 * the same connection.
 */
export function ProgressPanel({ allowedOrigins }: { allowedOrigins: string[] }) {
  const [open, setOpen] = useState(false);
  return (
    <>
      <button data-testid="toggle-progress" onClick={() => setOpen((o) => !o)}>
        {open ? 'Hide render progress' : 'Show render progress'}
      </button>
      {open && <LatestJob allowedOrigins={allowedOrigins} />}
    </>
  );
}

/** The last event ids, newest last: what the end-to-end tests compare with what was published. */
/** Every event (so, while mounted, every event type is selected). */
export function RecentEvents() {
  const client = useRealtimeClient();
  const [ids, setIds] = useState<string[]>([]);
  useEffect(() => client?.onEvent((e: RealtimeEvent) => setIds((prev) => [...prev, e.event_id].slice(-50))), [client]);
  return (
    <section className="card">
      <h2>Recent events</h2>
      <ol className="muted" data-testid="events">
        {ids.map((id) => (
          <li key={id}>{id}</li>
        ))}
      </ol>
    </section>
  );
}
