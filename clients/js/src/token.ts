/**
 * Getting a token: from the app's `getToken` or from a token URL, checked before it is
 * ever sent, so an error page or a JSON error body can never travel as a credential.
 */

/** Why no token could be had. `status` is the token endpoint's HTTP status, when there was one. */
export class TokenError extends Error {
  readonly status: number | undefined;
  constructor(message: string, status?: number, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TokenError';
    this.status = status;
  }
}

/** RFC 6750 `b64token`: what a bearer token may contain (a JWT always fits). */
const BEARER = /^[A-Za-z0-9\-._~+/]+=*$/;
/** What fits in `Sec-WebSocket-Protocol` (an RFC 7230 token). JWTs fit; `/` and `=` do not. */
const PROTOCOL_SAFE = /^[A-Za-z0-9\-._~+]+$/;
/** Far above any real JWT, far below what a proxy would refuse as a header. */
const MAX_TOKEN_CHARS = 8_192;

/**
 * Returns the token to send, or null for cookie authentication. Throws a `TokenError` for
 * anything that is not a plausible bearer token.
 */
export function checkToken(value: unknown, inProtocol: boolean): string | null {
  if (value === null || value === undefined) return null;
  if (typeof value !== 'string') {
    throw new TokenError(`getToken() must return a string, null or undefined, got ${typeof value}`);
  }
  if (value.length > MAX_TOKEN_CHARS || !BEARER.test(value)) {
    // Never quote the value: it may be a credential.
    throw new TokenError(
      'getToken() returned something that is not a bearer token (an error page or JSON error body?); it was not sent',
    );
  }
  if (inProtocol && !PROTOCOL_SAFE.test(value)) {
    throw new TokenError(
      'this token contains "/" or "=", which cannot travel in Sec-WebSocket-Protocol: use tokenTransport "query"',
    );
  }
  return value;
}

/**
 * Fetches a token from an endpoint of the app (same-origin cookies included). A JSON
 * answer is read as `{"token": ...}` (or `access_token`), anything else as the token
 * itself. A non-2xx answer throws a `TokenError` carrying the status: nothing from an
 * error body is ever used as a token.
 */
export async function fetchToken(url: string, fetchImpl: typeof fetch = fetch): Promise<string | null> {
  return (await fetchTokenAnswer(url, fetchImpl)).token;
}

/**
 * What a token endpoint answered: the token, and in a JSON answer, optionally, where the
 * gateway is (`url`) and which transport to use: runtime configuration for a page that
 * was built statically.
 */
export interface TokenAnswer {
  token: string | null;
  url?: string;
  transport?: string;
}

export async function fetchTokenAnswer(url: string, fetchImpl: typeof fetch): Promise<TokenAnswer> {
  let res: Response;
  try {
    res = await fetchImpl(url, {
      credentials: 'same-origin',
      cache: 'no-store',
      headers: { accept: 'application/json, text/plain' },
    });
  } catch (cause) {
    throw new TokenError(`token endpoint unreachable: ${url}`, undefined, { cause });
  }
  if (!res.ok) {
    throw new TokenError(`token endpoint answered ${res.status}`, res.status);
  }
  if ((res.headers.get('content-type') ?? '').includes('json')) {
    const body: unknown = await res.json().catch(() => undefined);
    const record = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
    const token = record.token ?? record.access_token;
    if (token !== null && typeof token !== 'string') {
      throw new TokenError('token endpoint answered JSON without a "token" string', res.status);
    }
    return {
      token,
      ...(typeof record.url === 'string' ? { url: record.url } : {}),
      ...(typeof record.transport === 'string' ? { transport: record.transport } : {}),
    };
  }
  return { token: (await res.text()).trim() };
}

/** Rejects with a `TokenError` when `promise` has not settled within `ms`. */
export function withDeadline<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  return new Promise<T>((resolve, reject) => {
    const timer = setTimeout(() => reject(new TokenError(`${what} did not settle within ${ms} ms`)), ms);
    promise.then(
      (v) => {
        clearTimeout(timer);
        resolve(v);
      },
      (e: unknown) => {
        clearTimeout(timer);
        reject(e);
      },
    );
  });
}
