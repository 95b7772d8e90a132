/**
 * The state the hooks show, as pure reducers over events: no React and no 'use client',
 * so a server component can fold the platform's REST state the same way and hand the
 * result to a hook as its `initial`.
 */
import type { NotificationCreated, NotificationEvent, RenderJobEvent } from './events.js';
import { safeHttpUrl } from './url.js';

// ---- render progress ---------------------------------------------------------------

export type RenderStatus = 'unknown' | 'queued' | 'started' | 'progress' | 'completed' | 'failed' | 'cancelled';

export interface RenderProgressState {
  status: RenderStatus;
  /** 0–100. */
  progress: number;
  frame?: number;
  totalFrames?: number;
  /** `output_url` when it is an http(s) URL (of an allowed origin, if you gave a list); safe for `href`. */
  outputUrl?: string;
  error?: string;
}

export interface RenderProgressOptions {
  /** Only `output_url`s on these origins become `outputUrl`, e.g. `['https://cdn.flatrender.example']`. */
  allowedOrigins?: readonly string[];
}

export const INITIAL_RENDER_PROGRESS: RenderProgressState = { status: 'unknown', progress: 0 };

/**
 * Applies one render.job.* event. Events arrive in order, so the latest one wins (a
 * re-queued job goes back to 'queued'). Exported so apps can fold REST state and events
 * the same way.
 */
export function reduceRenderProgress(
  prev: RenderProgressState,
  event: RenderJobEvent,
  options: RenderProgressOptions = {},
): RenderProgressState {
  switch (event.event_type) {
    case 'render.job.queued.v1':
      return { status: 'queued', progress: 0 };
    case 'render.job.started.v1':
      return { ...prev, status: 'started' };
    case 'render.job.progress.v1': {
      const { progress, frame, total_frames } = event.data;
      return {
        ...prev,
        status: 'progress',
        progress: typeof progress === 'number' && Number.isFinite(progress) ? Math.min(100, Math.max(0, progress)) : prev.progress,
        ...(typeof frame === 'number' ? { frame } : {}),
        ...(typeof total_frames === 'number' ? { totalFrames: total_frames } : {}),
      };
    }
    case 'render.job.completed.v1': {
      // A producer's `javascript:` or foreign URL must never become a link.
      const outputUrl = safeHttpUrl(event.data.output_url, options.allowedOrigins);
      const { outputUrl: _dropped, ...rest } = prev;
      return { ...rest, status: 'completed', progress: 100, ...(outputUrl !== undefined ? { outputUrl } : {}) };
    }
    case 'render.job.failed.v1': {
      const error = event.data.error ?? event.data.reason;
      return { ...prev, status: 'failed', ...(typeof error === 'string' ? { error } : {}) };
    }
    case 'render.job.cancelled.v1':
      return { ...prev, status: 'cancelled' };
  }
}

// ---- notifications -------------------------------------------------------------------

export interface NotificationsState {
  /** `notification.created.v1` events, newest first, at most the `max` given to the reducer. */
  items: NotificationCreated[];
  /** How many arrived since the last `markAllRead`. */
  unread: number;
}

export const INITIAL_NOTIFICATIONS: NotificationsState = { items: [], unread: 0 };

/** How many notifications the reducer keeps by default. */
export const DEFAULT_MAX_NOTIFICATIONS = 50;

/**
 * Applies one notification event: a `notification.created.v1` goes first and counts as
 * unread, unless a notification with its `notification_id` is already listed (one
 * rendered by the server and then received live); other types change nothing.
 */
export function reduceNotifications(
  prev: NotificationsState,
  event: NotificationEvent,
  options: { max?: number } = {},
): NotificationsState {
  if (event.event_type !== 'notification.created.v1') return prev;
  const id = event.data.notification_id;
  if (prev.items.some((n) => n.data.notification_id === id)) return prev;
  return { items: [event, ...prev.items].slice(0, options.max ?? DEFAULT_MAX_NOTIFICATIONS), unread: prev.unread + 1 };
}

/** The same list with nothing unread. */
export function markNotificationsRead(prev: NotificationsState): NotificationsState {
  return prev.unread === 0 ? prev : { ...prev, unread: 0 };
}
