/**
 * The reducers the hooks use are part of the core entry, which never imports React, so a
 * server component can fold state the same way.
 */
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { describe, expect, it } from 'vitest';
import {
  INITIAL_NOTIFICATIONS,
  INITIAL_RENDER_PROGRESS,
  markNotificationsRead,
  reduceNotifications,
  reduceRenderProgress,
  type NotificationCreated,
  type RenderJobEvent,
} from '../src/index.js';
import { envelope } from './fakes.js';

/** Every module the core entry reaches, and what each imports. */
function imports(file: string, seen = new Map<string, string[]>()): Map<string, string[]> {
  if (seen.has(file)) return seen;
  const specs = [...readFileSync(file, 'utf8').matchAll(/^(?:import|export)[^;]*?from '([^']+)'/gms)].map((m) => m[1]!);
  seen.set(file, specs);
  for (const s of specs.filter((s) => s.startsWith('.'))) imports(join(dirname(file), s.replace(/\.js$/, '.ts')), seen);
  return seen;
}

describe('core reducers', () => {
  it('the core entry reaches no React and no client-only module', () => {
    const graph = imports(join(__dirname, '../src/index.ts'));
    expect(graph.size).toBeGreaterThan(5);
    expect([...graph.keys()].some((f) => f.endsWith('react.ts'))).toBe(false);
    expect([...graph.values()].flat().filter((s) => !s.startsWith('.'))).toEqual([]);
  });

  it('reduceRenderProgress folds a job from its events', () => {
    const events = [
      envelope('render.job.queued.v1', { job_id: 'j' }),
      envelope('render.job.progress.v1', { job_id: 'j', progress: 55 }),
    ] as RenderJobEvent[];
    expect(events.reduce((s, e) => reduceRenderProgress(s, e), INITIAL_RENDER_PROGRESS)).toEqual({
      status: 'progress',
      progress: 55,
    });
  });

  it('reduceNotifications lists created ones newest first, once each, within max', () => {
    const n = (id: string) => envelope('notification.created.v1', { notification_id: id }) as NotificationCreated;
    let s = reduceNotifications(INITIAL_NOTIFICATIONS, n('a'));
    s = reduceNotifications(s, n('b'), { max: 2 });
    s = reduceNotifications(s, n('a'), { max: 2 }); // the same notification again (server-rendered, then live)
    s = reduceNotifications(s, n('c'), { max: 2 });
    expect(s.items.map((e) => e.data.notification_id)).toEqual(['c', 'b']);
    expect(s.unread).toBe(3);
    const read = markNotificationsRead(s);
    expect(read).toEqual({ items: s.items, unread: 0 });
    expect(markNotificationsRead(read)).toBe(read);
  });
});
