/**
 * Typed view of FlatRender's event catalog as the gateway forwards it.
 *
 * The gateway passes each published envelope through unchanged and only checks
 * `event_id`, `event_type`, `tenant_id` and `user_id`; everything else here is the
 * catalog's promise, not something this package validates. Every `data` type keeps an
 * index signature so fields added by producers later don't break compilation.
 */

/** Fields producers may add that this package does not know about yet. */
export interface Extra {
  [key: string]: unknown;
}

/** The envelope every catalog event is published in. */
export interface Envelope<T extends string = string, D = unknown> {
  event_id: string;
  event_type: T;
  /** RFC 3339 timestamp set by the producer. */
  event_time: string;
  tenant_id: string;
  /** Absent or null for tenant-wide events. */
  user_id?: string | null;
  trace_id: string;
  correlation_id: string;
  producer: string;
  data: D;
}

// ---- render jobs ----------------------------------------------------------------

export interface RenderJobData extends Extra {
  job_id: string;
}

export interface RenderJobProgressData extends RenderJobData {
  /** 0–100. */
  progress: number;
  frame?: number;
  total_frames?: number;
}

export interface RenderJobCompletedData extends RenderJobData {
  output_url?: string;
  duration_ms?: number;
}

export interface RenderJobFailedData extends RenderJobData {
  error?: string;
  reason?: string;
}

export type RenderJobQueued = Envelope<'render.job.queued.v1', RenderJobData>;
export type RenderJobStarted = Envelope<'render.job.started.v1', RenderJobData>;
export type RenderJobProgress = Envelope<'render.job.progress.v1', RenderJobProgressData>;
export type RenderJobCompleted = Envelope<'render.job.completed.v1', RenderJobCompletedData>;
export type RenderJobFailed = Envelope<'render.job.failed.v1', RenderJobFailedData>;
export type RenderJobCancelled = Envelope<'render.job.cancelled.v1', RenderJobData>;

export type RenderJobEvent =
  | RenderJobQueued
  | RenderJobStarted
  | RenderJobProgress
  | RenderJobCompleted
  | RenderJobFailed
  | RenderJobCancelled;

// ---- notifications ----------------------------------------------------------------

export interface NotificationData extends Extra {
  notification_id: string;
}

export interface NotificationCreatedData extends NotificationData {
  kind?: string;
  title?: string;
  body?: string;
  /** Set when the notification is about a render job. */
  job_id?: string;
}

export interface NotificationDeliveredData extends NotificationData {
  channel?: string;
}

export interface NotificationFailedData extends NotificationData {
  channel?: string;
  error?: string;
  reason?: string;
}

export type NotificationCreated = Envelope<'notification.created.v1', NotificationCreatedData>;
export type NotificationDelivered = Envelope<'notification.delivered.v1', NotificationDeliveredData>;
export type NotificationFailed = Envelope<'notification.failed.v1', NotificationFailedData>;

export type NotificationEvent = NotificationCreated | NotificationDelivered | NotificationFailed;

// ---- unions -----------------------------------------------------------------------

/** Every event type of the catalog, discriminated on `event_type`. */
export type CatalogEvent = RenderJobEvent | NotificationEvent;
export type CatalogEventType = CatalogEvent['event_type'];
/** The catalog event whose `event_type` is `T`. */
export type EventOfType<T extends CatalogEventType> = Extract<CatalogEvent, { event_type: T }>;

/**
 * An event whose type this version of the package does not know.
 *
 * Kept out of `CatalogEvent` on purpose: a member with `event_type: string` would make
 * `switch (e.event_type)` unable to narrow `data`. Use `isCatalogEvent` / `isEventType`
 * on a `RealtimeEvent` to get the typed view.
 */
export type UnknownEvent = Envelope<string, unknown>;

/** What `onEvent` listeners receive: a known catalog event or an unknown one. */
export type RealtimeEvent = CatalogEvent | UnknownEvent;

export const CATALOG_EVENT_TYPES: readonly CatalogEventType[] = [
  'render.job.queued.v1',
  'render.job.started.v1',
  'render.job.progress.v1',
  'render.job.completed.v1',
  'render.job.failed.v1',
  'render.job.cancelled.v1',
  'notification.created.v1',
  'notification.delivered.v1',
  'notification.failed.v1',
];

const KNOWN = new Set<string>(CATALOG_EVENT_TYPES);

export function isCatalogEvent(e: RealtimeEvent): e is CatalogEvent {
  return KNOWN.has(e.event_type);
}

export function isEventType<T extends CatalogEventType>(e: RealtimeEvent, type: T): e is EventOfType<T> {
  return e.event_type === type;
}

export function isRenderJobEvent(e: RealtimeEvent): e is RenderJobEvent {
  return isCatalogEvent(e) && e.event_type.startsWith('render.job.');
}

export function isNotificationEvent(e: RealtimeEvent): e is NotificationEvent {
  return isCatalogEvent(e) && e.event_type.startsWith('notification.');
}

// ---- control messages ---------------------------------------------------------------

/** Gateway control messages: objects with `type` and no `event_id`. Never delivered as events. */
export type ControlMessage =
  | { type: 'resync' }
  | { type: 'pong' }
  | { type: 'refreshed'; exp: number }
  | { type: 'error'; reason: string }
  | { type: 'close'; reason: string };
