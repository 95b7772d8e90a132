/**
 * Noticing that the page woke up: the browser came back `online`, or the tab is visible
 * again after a long hide (a closed laptop lid). Either may leave a connection that died
 * silently (so it is asked, with a ping, whether it lives: a hidden tab's healthy socket
 * stays), or a reconnect waiting out a long backoff that no one needs to wait for now.
 */
import type { PageLifecycle } from './api.js';

export interface WakeHooks {
  now: () => number;
  /** A tab hidden at least this long reconnects when shown. */
  resumeAfterHiddenMs: number;
  /** The client is waiting out a backoff: any return to the tab reconnects. */
  waiting: () => boolean;
  /** Connect now (the client is waiting out a backoff, or the network is back). */
  wake: () => void;
  /** Ask the open connection whether it is alive (a ping); it is dropped only if it does not answer. */
  check: () => void;
}

/** Listens on the page (or the injected targets); returns the function that stops listening. */
export function watchPage(lifecycle: PageLifecycle | undefined, hooks: WakeHooks): () => void {
  const g = globalThis as { window?: PageLifecycle['window']; document?: PageLifecycle['document'] };
  const win = lifecycle?.window ?? g.window;
  const doc = lifecycle?.document ?? g.document;
  let hiddenAt: number | undefined;
  const onOnline = () => (hooks.waiting() ? hooks.wake() : hooks.check());
  const onVisibility = () => {
    if (doc?.visibilityState === 'hidden') {
      hiddenAt = hooks.now();
      return;
    }
    const hiddenFor = hiddenAt === undefined ? 0 : hooks.now() - hiddenAt;
    hiddenAt = undefined;
    if (hooks.waiting()) hooks.wake();
    else if (hiddenFor >= hooks.resumeAfterHiddenMs) hooks.check();
  };
  // Focus: a signed-out client waits for it (the user may have signed in in another tab).
  const onFocus = () => {
    if (hooks.waiting()) hooks.wake();
  };
  win?.addEventListener('online', onOnline);
  win?.addEventListener('focus', onFocus);
  doc?.addEventListener('visibilitychange', onVisibility);
  return () => {
    win?.removeEventListener('online', onOnline);
    win?.removeEventListener('focus', onFocus);
    doc?.removeEventListener('visibilitychange', onVisibility);
  };
}
