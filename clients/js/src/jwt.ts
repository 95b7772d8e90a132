/**
 * Reads the claims this client needs from a JWT without verifying it: the gateway
 * verifies; the browser only needs `exp` (and `iat`) to know when to refresh.
 */
export interface TokenTimes {
  /** Expiry, unix seconds. */
  exp?: number;
  /** Issued at, unix seconds. */
  iat?: number;
}

/** Returns `exp`/`iat` of a JWT, or `{}` for anything that isn't a decodable JWT. */
export function decodeTokenTimes(token: string): TokenTimes {
  const payload = token.split('.')[1];
  if (!payload) return {};
  try {
    const claims: unknown = JSON.parse(base64UrlDecode(payload));
    if (typeof claims !== 'object' || claims === null) return {};
    const { exp, iat } = claims as Record<string, unknown>;
    return {
      ...(typeof exp === 'number' && Number.isFinite(exp) ? { exp } : {}),
      ...(typeof iat === 'number' && Number.isFinite(iat) ? { iat } : {}),
    };
  } catch {
    return {};
  }
}

function base64UrlDecode(s: string): string {
  const b64 = s.replace(/-/g, '+').replace(/_/g, '/').padEnd(Math.ceil(s.length / 4) * 4, '=');
  const binary = atob(b64);
  // atob yields one char per byte; decode as UTF-8 so non-ASCII claims can't break JSON.parse.
  const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/** Smallest delay between two refresh attempts, so a bad clock or token can never spin. */
export const MIN_REFRESH_DELAY_MS = 5_000;

/** `setTimeout` keeps delays in 32 bits: anything longer fires at once. */
export const MAX_TIMER_MS = 2 ** 31 - 1;

/**
 * Milliseconds from `nowMs` until the token should be refreshed: at 80 % of its lifetime,
 * or `marginMs` before expiry if that is sooner. The margin never moves the refresh before
 * half the lifetime, so a short token with a large margin is not refreshed over and over
 * (a 60 s token with the default 60 s margin refreshes after 30 s, not every 5 s). Never
 * less than `MIN_REFRESH_DELAY_MS`; may exceed `MAX_TIMER_MS` (callers cap their timers).
 * `null` if the token has no `exp`.
 */
export function refreshDelay(times: TokenTimes, nowMs: number, marginMs: number): number | null {
  if (times.exp === undefined) return null;
  const expMs = times.exp * 1000;
  let remaining = expMs - nowMs;
  let lifetime = times.iat !== undefined ? expMs - times.iat * 1000 : remaining;
  // A browser clock can be minutes off the server's. If it claims the token is already
  // dead or issued in the future, trust the token's own lifetime (both server clock).
  if (times.iat !== undefined && lifetime > 0 && (remaining <= 0 || remaining > lifetime)) {
    remaining = lifetime;
  }
  if (!(lifetime > 0)) lifetime = Math.max(remaining, 0);
  const margin = Math.min(marginMs, 0.5 * lifetime);
  const delay = Math.min(remaining - margin, remaining - 0.2 * lifetime);
  return Math.max(delay, MIN_REFRESH_DELAY_MS);
}
