/**
 * Noticing that the page woke up: the browser came back `online`, or the tab is visible
 * again after a long hide (a closed laptop lid). Either may leave a connection that died
 * silently, or a reconnect waiting out a long backoff that no one needs to wait for now.
 */
import type { PageLifecycle } from './api.js';

export interface WakeHooks {
  now: () => number;
  /** A tab hidden at least this long reconnects when shown. */
  resumeAfterHiddenMs: number;
  /** The client is waiting out a backoff: any return to the tab reconnects. */
  waiting: () => boolean;
  wake: () => void;
}

/** Listens on the page (or the injected targets); returns the function that stops listening. */
export function watchPage(lifecycle: PageLifecycle | undefined, hooks: WakeHooks): () => void {
  const g = globalThis as { window?: PageLifecycle['window']; document?: PageLifecycle['document'] };
  const win = lifecycle?.window ?? g.window;
  const doc = lifecycle?.document ?? g.document;
  let hiddenAt: number | undefined;
  const onOnline = () => hooks.wake();
  const onVisibility = () => {
    if (doc?.visibilityState === 'hidden') {
      hiddenAt = hooks.now();
      return;
    }
    const hiddenFor = hiddenAt === undefined ? 0 : hooks.now() - hiddenAt;
    hiddenAt = undefined;
    if (hiddenFor >= hooks.resumeAfterHiddenMs || hooks.waiting()) hooks.wake();
  };
  win?.addEventListener('online', onOnline);
  doc?.addEventListener('visibilitychange', onVisibility);
  return () => {
    win?.removeEventListener('online', onOnline);
    doc?.removeEventListener('visibilitychange', onVisibility);
  };
}
