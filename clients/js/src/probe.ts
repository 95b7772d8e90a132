/**
 * Learning why a connection failed. Browsers hide the status of a refused WebSocket
 * handshake (and of a refused EventSource), so after a failed attempt the client asks
 * `GET <base>/auth/check` with the same token: the gateway answers 204 when the token is
 * fine and a connection would be admitted, otherwise the status and JSON body a refused
 * upgrade would have had.
 */

export type ProbeResult =
  /** 204: the gateway would admit us; if WebSocket still failed, something on the path blocks it. */
  | { kind: 'admitted' }
  /** The gateway refused, and said why. */
  | { kind: 'refused'; status: number; error: string; reason: string; retryAfterMs: number | undefined }
  /** 400 `types` or `keys`: the gateway refuses the selection (more than its GATEWAY_MAX_INTEREST_PATTERNS). */
  | { kind: 'bad_types' }
  /** The gateway answers HTTP but has no probe (404, 405: an older gateway). */
  | { kind: 'unsupported' }
  /** Nothing useful came back (network error, timeout, a proxy's 502): the gateway is likely down. */
  | { kind: 'unreachable' };

const REFUSALS = new Set([401, 403, 429, 503]);

export async function probeAuth(
  base: URL,
  token: string,
  fetchImpl: typeof fetch,
  timeoutMs: number,
): Promise<ProbeResult> {
  const url = new URL(base.href);
  url.protocol = url.protocol === 'wss:' || url.protocol === 'https:' ? 'https:' : 'http:';
  url.pathname = url.pathname.replace(/\/+$/, '') + '/auth/check';
  url.search = '';
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetchImpl(url.href, {
      headers: { authorization: `Bearer ${token}` },
      credentials: 'omit',
      cache: 'no-store',
      signal: abort.signal,
    });
    if (res.status === 204 || res.status === 200) return { kind: 'admitted' };
    return await readRefusal(res);
  } catch {
    return { kind: 'unreachable' };
  } finally {
    clearTimeout(timer);
  }
}

/**
 * What `GET /sse` (the stream URL, with its `types=`) answers this token, or the cookie
 * when `token` is null: the stream itself is the probe when `/auth/check` cannot tell
 * (a cookie, which it does not read cross-origin; a selection, which it does not check).
 * An admitted stream is closed as soon as its headers arrive.
 */
export async function probeStream(
  url: string,
  token: string | null,
  fetchImpl: typeof fetch,
  timeoutMs: number,
): Promise<ProbeResult> {
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), timeoutMs);
  try {
    const res = await fetchImpl(url, {
      headers: token === null ? {} : { authorization: `Bearer ${token}` },
      credentials: token === null ? 'include' : 'omit',
      cache: 'no-store',
      signal: abort.signal,
    });
    if (res.ok) return { kind: 'admitted' };
    return await readRefusal(res);
  } catch {
    return { kind: 'unreachable' };
  } finally {
    clearTimeout(timer);
    abort.abort();
  }
}

/** What a non-2xx answer of the gateway (`/auth/check`, `/sse`) says about an attempt. */
export async function readRefusal(res: Response): Promise<ProbeResult> {
  if (res.status === 404 || res.status === 405) return { kind: 'unsupported' };
  if (!REFUSALS.has(res.status) && res.status !== 400) return { kind: 'unreachable' };
  const body: unknown = await res.json().catch(() => undefined);
  const record = typeof body === 'object' && body !== null ? (body as Record<string, unknown>) : {};
  const reason = typeof record.reason === 'string' ? record.reason : '';
  if (res.status === 400) return reason === 'types' || reason === 'keys' ? { kind: 'bad_types' } : { kind: 'unsupported' };
  return {
    kind: 'refused',
    status: res.status,
    error: typeof record.error === 'string' ? record.error : '',
    reason,
    retryAfterMs: retryAfterMs(res.headers.get('retry-after')),
  };
}

/** `Retry-After` in seconds (the gateway's form); dates and junk are ignored. */
function retryAfterMs(header: string | null): number | undefined {
  if (header === null || !/^\d{1,6}$/.test(header.trim())) return undefined;
  return Number(header.trim()) * 1000;
}
