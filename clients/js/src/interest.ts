/**
 * Which event types the client asks the gateway for: topic patterns with the gateway's
 * rules (words between dots, `*` one word, `#` zero or more), counted per registration so
 * that what mounted components need, and only that, is selected.
 */

/** The gateway's longest pattern. */
export const MAX_PATTERN_BYTES = 255;
/** The gateway's default `GATEWAY_MAX_INTEREST_PATTERNS`. */
export const DEFAULT_MAX_SELECTED_TYPES = 32;
/** Long enough for one render pass (and StrictMode's remount) to send one message. */
export const DEFAULT_SELECTION_DEBOUNCE_MS = 50;

/**
 * Throws a `TypeError` for a pattern the gateway would refuse (a 400 before the upgrade
 * looks to a browser like a blocked path, so it must never be sent).
 */
export function checkPattern(p: unknown): string {
  if (typeof p !== 'string' || p === '' || new TextEncoder().encode(p).length > MAX_PATTERN_BYTES) {
    throw new TypeError(`realtime-client: an event type pattern is a string of 1 to ${MAX_PATTERN_BYTES} bytes, got ${JSON.stringify(p)}`);
  }
  if (!/^[A-Za-z0-9_.*#-]+$/.test(p)) {
    throw new TypeError(`realtime-client: event type pattern ${JSON.stringify(p)} may only hold letters, digits, _ - . * #`);
  }
  for (const word of p.split('.')) {
    if (word === '' || (word.length > 1 && /[*#]/.test(word))) {
      throw new TypeError(`realtime-client: event type pattern ${JSON.stringify(p)} has an empty word or a wildcard inside a word`);
    }
  }
  return p;
}

/** Patterns from one string or a list, each checked. */
export function checkPatterns(types: string | readonly string[]): string[] {
  const list = typeof types === 'string' ? [types] : [...types];
  return list.map(checkPattern);
}

/** Whether `pattern` matches the event type `type` (AMQP topic semantics). */
export function topicMatches(pattern: string, type: string): boolean {
  return covers(pattern.split('.'), type.split('.'), false);
}

/**
 * Whether `p` selects everything `q` selects. With `wild`, `q`'s `*` and `#` are
 * wildcards that only a wildcard of `p` can cover; without, they are plain words.
 */
function covers(p: string[], q: string[], wild: boolean): boolean {
  if (p.length === 0) return q.length === 0;
  const [head, ...rest] = p;
  if (head === '#') return covers(rest, q, wild) || (q.length > 0 && covers(p, q.slice(1), wild));
  if (q.length === 0) return false;
  const word = q[0]!;
  if (wild && word === '#') return false;
  if (head === '*') return covers(rest, q.slice(1), wild);
  if (wild && word === '*') return false;
  return head === word && covers(rest, q.slice(1), wild);
}

/** Whether pattern `p` selects every event type pattern `q` selects. */
export function patternCovers(p: string, q: string): boolean {
  return covers(p.split('.'), q.split('.'), true);
}

/** Whether `selection` (null: everything) receives everything `wanted` asks for. */
export function selectionCovers(selection: readonly string[] | null, wanted: readonly string[] | null): boolean {
  if (selection === null) return true;
  if (wanted === null) return selection.includes('#');
  return wanted.every((q) => selection.some((p) => patternCovers(p, q)));
}

/** Same patterns, in any order (both null: everything). */
export function sameSelection(a: readonly string[] | null, b: readonly string[] | null): boolean {
  if (a === null || b === null) return a === b;
  return a.length === b.length && a.every((p) => b.includes(p));
}

/**
 * Reference-counted registrations. `selection` is their union, reduced: patterns covered
 * by another are left out, and the rest sorted, so equal needs make equal URLs. It is
 * null (everything) when nothing is registered (a client nobody has told what it needs
 * behaves as before), when something needs `#`, or when the union would exceed `max`
 * patterns (more than the gateway takes; receiving more is safe, a refusal is not).
 */
export class Interests {
  private readonly counts = new Map<string, number>();

  constructor(private readonly max: number) {}

  /** Registers `patterns` (already checked) and returns the function that releases them once. */
  add(patterns: readonly string[]): () => void {
    for (const p of patterns) this.counts.set(p, (this.counts.get(p) ?? 0) + 1);
    let released = false;
    return () => {
      if (released) return;
      released = true;
      for (const p of patterns) {
        const n = (this.counts.get(p) ?? 1) - 1;
        if (n <= 0) this.counts.delete(p);
        else this.counts.set(p, n);
      }
    };
  }

  get selection(): string[] | null {
    const all = [...this.counts.keys()];
    if (all.length === 0 || all.includes('#')) return null;
    const kept = all.filter((q) => !all.some((p) => p !== q && patternCovers(p, q) && !(patternCovers(q, p) && p > q)));
    kept.sort();
    return kept.length > this.max ? null : kept;
  }
}

/** The gateway's longest state key. */
export const MAX_KEY_BYTES = 255;

/** Throws a `TypeError` for a state key the gateway would refuse (a 400 `keys` before the upgrade). */
export function checkKey(k: unknown): string {
  if (typeof k !== 'string' || !/^[A-Za-z0-9_.:@-]+$/.test(k) || new TextEncoder().encode(k).length > MAX_KEY_BYTES) {
    throw new TypeError(
      `realtime-client: a state key is 1 to ${MAX_KEY_BYTES} bytes of letters, digits and _ - . : @, got ${JSON.stringify(k)}`,
    );
  }
  return k;
}

/** The catalog's render job types: the events the gateway keeps as state by default (`GATEWAY_STATE`). */
const STATE_TYPES = ['queued', 'started', 'progress', 'completed', 'failed', 'cancelled'].map((t) => `render.job.${t}.v1`);

/**
 * Whether a registration of `patterns` can receive the state of keys it did not name (a
 * list of every job, say): while it is registered, the client selects no keys, because
 * with keys selected the gateway sends the state of those keys only.
 */
export function needsEveryKey(patterns: readonly string[]): boolean {
  return patterns.some((p) => STATE_TYPES.some((t) => topicMatches(p, t)));
}

/**
 * Watched state keys (render job ids), reference-counted like `Interests`. `selection`
 * is null (every key: no `keys=`) when nothing is watched, when some registration needs
 * every key, or when the keys would exceed `max`; `needsAll` tells the last two apart
 * from the first, in which a connection may keep whatever keys it holds.
 */
export class Keys {
  private readonly counts = new Map<string, number>();
  private everyKey = 0;
  /** Keys registered since the gateway was last asked for a snapshot: their hooks start empty. */
  private fresh = false;

  constructor(private readonly max: number) {}

  /** Registers `keys` (already checked; null: every key) and returns the function that releases them once. */
  add(keys: readonly string[] | null): () => void {
    if (keys === null) this.everyKey++;
    else {
      for (const k of keys) this.counts.set(k, (this.counts.get(k) ?? 0) + 1);
      if (keys.length > 0) this.fresh = true;
    }
    let released = false;
    return () => {
      if (released) return;
      released = true;
      if (keys === null) this.everyKey--;
      else {
        for (const k of keys) {
          const n = (this.counts.get(k) ?? 1) - 1;
          if (n <= 0) this.counts.delete(k);
          else this.counts.set(k, n);
        }
      }
    };
  }

  get needsAll(): boolean {
    return this.everyKey > 0 || this.counts.size > this.max;
  }

  get selection(): string[] | null {
    if (this.counts.size === 0 || this.needsAll) return null;
    return [...this.counts.keys()].sort();
  }

  /** Whether a snapshot is owed to keys registered since the last call. */
  takeFresh(): boolean {
    const fresh = this.fresh;
    this.fresh = false;
    return fresh;
  }

  /** Whether a snapshot is owed, without settling it. */
  get owesSnapshot(): boolean {
    return this.fresh;
  }
}
