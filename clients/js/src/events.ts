/**
 * Typed view of FlatRender's event catalog as the gateway forwards it.
 *
 * The gateway passes each published envelope through unchanged and only checks
 * `event_id`, `event_type`, `tenant_id` and `user_id`. A producer can still publish
 * `data: null` or a string `progress`, so the type guards below (`isCatalogEvent`,
 * `isEventType`, `isRenderJobEvent`, `isNotificationEvent`) check the fields each type
 * declares before they narrow, and the client hands typed listeners only events that pass.
 * Every `data` type keeps an index signature so fields added by producers later don't
 * break compilation.
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
 * The event types `on(type)` and `useEvent(type)` know, each with the event it delivers.
 * Apps add their own by declaration merging; their `data` is not checked at run time
 * (only the catalog's own types are):
 *
 * ```ts
 * declare module '@flatrender/realtime-client' {
 *   interface EventCatalog {
 *     'comment.added.v1': Envelope<'comment.added.v1', { comment_id: string; text: string }>;
 *   }
 * }
 * ```
 */
export interface EventCatalog {
  'render.job.queued.v1': RenderJobQueued;
  'render.job.started.v1': RenderJobStarted;
  'render.job.progress.v1': RenderJobProgress;
  'render.job.completed.v1': RenderJobCompleted;
  'render.job.failed.v1': RenderJobFailed;
  'render.job.cancelled.v1': RenderJobCancelled;
  'notification.created.v1': NotificationCreated;
  'notification.delivered.v1': NotificationDelivered;
  'notification.failed.v1': NotificationFailed;
}

/** A type `on()` accepts: the catalog's and the app's own. */
export type KnownEventType = keyof EventCatalog & string;

/** What a listener for `T` receives: an exact type of the catalog, or any event for a pattern. */
export type EventFor<T extends string> = T extends KnownEventType ? EventCatalog[T] : RealtimeEvent;

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

/** `CATALOG_EVENT_TYPES` as a set. */
export const KNOWN_EVENT_TYPES: ReadonlySet<string> = new Set<string>(CATALOG_EVENT_TYPES);

type Check = (v: unknown) => boolean;
const str: Check = (v) => typeof v === 'string';
const num: Check = (v) => typeof v === 'number' && Number.isFinite(v);
const optional =
  (check: Check): Check =>
  (v) =>
    v === undefined || check(v);

/** For each catalog type, the checks its declared `data` fields must pass. */
const SHAPES: Record<CatalogEventType, Record<string, Check>> = {
  'render.job.queued.v1': { job_id: str },
  'render.job.started.v1': { job_id: str },
  'render.job.progress.v1': { job_id: str, progress: num, frame: optional(num), total_frames: optional(num) },
  'render.job.completed.v1': { job_id: str, output_url: optional(str), duration_ms: optional(num) },
  'render.job.failed.v1': { job_id: str, error: optional(str), reason: optional(str) },
  'render.job.cancelled.v1': { job_id: str },
  'notification.created.v1': {
    notification_id: str,
    kind: optional(str),
    title: optional(str),
    body: optional(str),
    job_id: optional(str),
  },
  'notification.delivered.v1': { notification_id: str, channel: optional(str) },
  'notification.failed.v1': { notification_id: str, channel: optional(str), error: optional(str), reason: optional(str) },
};

/** True when `e` is of a catalog type and its `data` has the fields that type declares. */
export function isCatalogEvent(e: RealtimeEvent): e is CatalogEvent {
  if (!KNOWN_EVENT_TYPES.has(e.event_type)) return false;
  const data: unknown = e.data;
  if (typeof data !== 'object' || data === null || Array.isArray(data)) return false;
  const shape = SHAPES[e.event_type as CatalogEventType];
  return Object.entries(shape).every(([field, check]) => check((data as Record<string, unknown>)[field]));
}

export function isEventType<T extends CatalogEventType>(e: RealtimeEvent, type: T): e is EventOfType<T> {
  return e.event_type === type && isCatalogEvent(e);
}

export function isRenderJobEvent(e: RealtimeEvent): e is RenderJobEvent {
  return e.event_type.startsWith('render.job.') && isCatalogEvent(e);
}

export function isNotificationEvent(e: RealtimeEvent): e is NotificationEvent {
  return e.event_type.startsWith('notification.') && isCatalogEvent(e);
}

// ---- control messages ---------------------------------------------------------------

/** Gateway control messages: objects with `type` and no `event_id`. Never delivered as events. */
export type ControlMessage =
  | { type: 'resync' }
  | { type: 'pong' }
  | { type: 'refreshed'; exp: number }
  | { type: 'error'; reason: string }
  | { type: 'close'; reason: string }
  | { type: 'heartbeat' };
