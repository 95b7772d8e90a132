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

/**
 * Milliseconds from `nowMs` until the token should be refreshed: `marginMs` before
 * expiry or at 80 % of its lifetime, whichever comes first. `null` if it has no `exp`.
 */
export function refreshDelay(times: TokenTimes, nowMs: number, marginMs: number): number | null {
  if (times.exp === undefined) return null;
  const expMs = times.exp * 1000;
  let remaining = expMs - nowMs;
  const lifetime = times.iat !== undefined ? expMs - times.iat * 1000 : remaining;
  // A browser clock can be minutes off the server's. If it claims the token is already
  // dead or issued in the future, trust the token's own lifetime (both server clock).
  if (times.iat !== undefined && lifetime > 0 && (remaining <= 0 || remaining > lifetime)) {
    remaining = lifetime;
  }
  const delay = Math.min(remaining - marginMs, remaining - 0.2 * lifetime);
  return Math.max(delay, MIN_REFRESH_DELAY_MS);
}
