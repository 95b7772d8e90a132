/**
 * URLs taken from events are data from producers, not trusted links: a `javascript:` URL
 * in `output_url` would run script when clicked (React 18 renders it as is).
 */

/**
 * Returns `value` normalised if it is an absolute http(s) URL, and (when `allowedOrigins`
 * is given) its origin is one of them; otherwise undefined. Use it for every `href` or
 * `src` built from event data.
 */
export function safeHttpUrl(value: unknown, allowedOrigins?: readonly string[]): string | undefined {
  if (typeof value !== 'string') return undefined;
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    return undefined; // relative or junk: there is no base to trust
  }
  if (url.protocol !== 'https:' && url.protocol !== 'http:') return undefined;
  if (url.username !== '' || url.password !== '') return undefined;
  if (allowedOrigins !== undefined && !allowedOrigins.some((o) => sameOrigin(o, url.origin))) return undefined;
  return url.href;
}

function sameOrigin(allowed: string, origin: string): boolean {
  try {
    return new URL(allowed).origin === origin;
  } catch {
    return false;
  }
}
