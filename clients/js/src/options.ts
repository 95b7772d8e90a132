/**
 * Checks the client's options once, at construction, so a mistake fails loudly where it
 * was made instead of turning into zero-delay retries or a request to `/undefined/ws`.
 */
import { DEFAULT_MAX_SELECTED_TYPES, DEFAULT_SELECTION_DEBOUNCE_MS } from './interest.js';


/** The numbers the client runs on, every one finite and in range. */
export interface Settings {
  backoffInitialMs: number;
  backoffMaxMs: number;
  connectTimeoutMs: number;
  healthyAfterMs: number;
  refreshBeforeExpiryMs: number;
  /** 0 = off. */
  pingIntervalMs: number;
  /** 0 = off. */
  sseHeartbeatTimeoutMs: number;
  pongTimeoutMs: number;
  wsRetryIntervalMs: number;
  resumeAfterHiddenMs: number;
  fallbackAfter: number;
  /** Timed retries after a signed-out refusal before waiting for focus or `reconnect()`. */
  signedOutRetries: number;
  dedupeWindow: number;
  /** 0 = on the next tick. */
  selectionDebounceMs: number;
  maxSelectedTypes: number;
}

/** What the numeric options may be left out as. */
export interface NumericOptions {
  backoff?: { initialMs?: number; maxMs?: number };
  connectTimeoutMs?: number;
  healthyAfterMs?: number;
  refreshBeforeExpiryMs?: number;
  pingIntervalMs?: number;
  sseHeartbeatTimeoutMs?: number;
  /** How long a liveness check waits for an answer to its ping (default 10 000). */
  pongTimeoutMs?: number;
  wsRetryIntervalMs?: number;
  resumeAfterHiddenMs?: number;
  fallbackAfter?: number;
  /** Timed retries after a 401/403 (signed out) before the client waits for focus, visibility, online or `reconnect()` (default 2). */
  signedOutRetries?: number;
  dedupeWindow?: number;
  /** How long the client gathers selection changes before telling the gateway (default 50). */
  selectionDebounceMs?: number;
  /** Most patterns sent (default 32, the gateway's default limit); a larger union asks for everything. */
  maxSelectedTypes?: number;
}

/** Below the gateway's default idle timeout (60 s) with room for one lost ping. */
export const DEFAULT_PING_INTERVAL_MS = 20_000;
/** 2.5 times the gateway's default SSE heartbeat interval (15 s). */
export const DEFAULT_SSE_HEARTBEAT_TIMEOUT_MS = 37_500;
/** How long a tab on SSE waits before trying WebSocket again. */
export const DEFAULT_WS_RETRY_INTERVAL_MS = 5 * 60_000;

export function resolveSettings(o: NumericOptions): Settings {
  const initial = positive('backoff.initialMs', o.backoff?.initialMs, 1_000);
  const settings: Settings = {
    backoffInitialMs: initial,
    backoffMaxMs: positive('backoff.maxMs', o.backoff?.maxMs, Math.max(30_000, initial)),
    connectTimeoutMs: positive('connectTimeoutMs', o.connectTimeoutMs, 15_000),
    healthyAfterMs: positive('healthyAfterMs', o.healthyAfterMs, 5_000),
    refreshBeforeExpiryMs: nonNegative('refreshBeforeExpiryMs', o.refreshBeforeExpiryMs, 60_000),
    pingIntervalMs: nonNegative('pingIntervalMs', o.pingIntervalMs, DEFAULT_PING_INTERVAL_MS),
    sseHeartbeatTimeoutMs: nonNegative('sseHeartbeatTimeoutMs', o.sseHeartbeatTimeoutMs, DEFAULT_SSE_HEARTBEAT_TIMEOUT_MS),
    pongTimeoutMs: positive('pongTimeoutMs', o.pongTimeoutMs, 10_000),
    wsRetryIntervalMs: positive('wsRetryIntervalMs', o.wsRetryIntervalMs, DEFAULT_WS_RETRY_INTERVAL_MS),
    resumeAfterHiddenMs: nonNegative('resumeAfterHiddenMs', o.resumeAfterHiddenMs, 60_000),
    fallbackAfter: count('fallbackAfter', o.fallbackAfter, 2),
    signedOutRetries: nonNegative('signedOutRetries', o.signedOutRetries, 2),
    dedupeWindow: count('dedupeWindow', o.dedupeWindow, 1_000),
    selectionDebounceMs: nonNegative('selectionDebounceMs', o.selectionDebounceMs, DEFAULT_SELECTION_DEBOUNCE_MS),
    maxSelectedTypes: count('maxSelectedTypes', o.maxSelectedTypes, DEFAULT_MAX_SELECTED_TYPES),
  };
  if (settings.backoffMaxMs < settings.backoffInitialMs) {
    throw new TypeError(
      `realtime-client: backoff.maxMs (${settings.backoffMaxMs}) must not be below backoff.initialMs (${settings.backoffInitialMs})`,
    );
  }
  return settings;
}

function positive(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value <= 0) {
    throw new TypeError(`realtime-client: ${name} must be a finite number above 0, got ${show(value)}`);
  }
  return value;
}

function nonNegative(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isFinite(value) || value < 0) {
    throw new TypeError(`realtime-client: ${name} must be a finite number of at least 0, got ${show(value)}`);
  }
  return value;
}

function count(name: string, value: unknown, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < 1) {
    throw new TypeError(`realtime-client: ${name} must be a whole number of at least 1, got ${show(value)}`);
  }
  return value;
}

/**
 * The gateway's base URL. Accepts an absolute http(s)/ws(s) URL, or a path starting with
 * `/` on the page's own origin. Anything else throws: a relative string such as
 * `"undefined"` (an unset build-time variable) would otherwise resolve against the page
 * and send the token to the app's own server.
 */
export function resolveBaseUrl(url: unknown, pageHref: string | undefined): URL {
  if (typeof url !== 'string' || url.trim() === '') {
    throw new TypeError(
      `realtime-client: \`url\` is required, got ${show(url)}. ` +
        'With Next.js, NEXT_PUBLIC_* variables are inlined when the app is built: set it at build time, ' +
        'or read the URL in a server component and pass it down.',
    );
  }
  let base: URL;
  if (/^[a-z][a-z0-9+.-]*:/i.test(url)) {
    try {
      base = new URL(url);
    } catch {
      throw new TypeError(`realtime-client: \`url\` is not a valid URL: ${show(url)}`);
    }
  } else if (url.startsWith('/') && !url.startsWith('//') && pageHref !== undefined) {
    base = new URL(url, pageHref);
  } else {
    throw new TypeError(
      `realtime-client: \`url\` must be an absolute http(s) or ws(s) URL (or a path starting with "/" in a browser), got ${show(url)}`,
    );
  }
  if (!/^(https?|wss?):$/.test(base.protocol)) {
    throw new TypeError(`realtime-client: \`url\` must be http(s) or ws(s), got ${show(url)}`);
  }
  if (base.username !== '' || base.password !== '') {
    throw new TypeError('realtime-client: `url` must not carry credentials');
  }
  base.hash = '';
  return base;
}

/** Hosts where a token may travel unencrypted: the machine itself. */
export function isLoopback(url: URL): boolean {
  const host = url.hostname;
  return (
    host === 'localhost' ||
    host.endsWith('.localhost') ||
    /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host) ||
    host === '[::1]'
  );
}

export function isSecure(url: URL): boolean {
  return url.protocol === 'https:' || url.protocol === 'wss:';
}

function show(value: unknown): string {
  if (typeof value === 'string') return JSON.stringify(value);
  if (typeof value === 'number') return String(value);
  return value === null ? 'null' : typeof value;
}
