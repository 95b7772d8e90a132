/**
 * Server-Sent Events over `fetch`, so the token travels in an `Authorization: Bearer`
 * header instead of the URL (which `EventSource` would print in console errors and
 * proxies would log). It looks like an `EventSource` to the client, and it also keeps what
 * `EventSource` hides: the status and JSON reason of a refused request, so a failed
 * stream needs no separate probe.
 */
import type { EventSourceLike } from './api.js';
import { readRefusal, type ProbeResult } from './probe.js';

/** Whether this runtime can read a response body as a stream. */
export function canStreamFetch(fetchImpl: typeof fetch | undefined): fetchImpl is typeof fetch {
  return (
    fetchImpl !== undefined &&
    typeof ReadableStream !== 'undefined' &&
    typeof TextDecoder !== 'undefined' &&
    typeof Response !== 'undefined' &&
    'body' in Response.prototype
  );
}

type Listener = (ev: MessageEvent) => void;

export class FetchEventSource implements EventSourceLike {
  readyState = 0;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: Listener | null = null;
  onerror: ((ev: Event) => void) | null = null;
  /** Why the stream could not open, when the answer said (a refusal), or that nothing answered. */
  failure: ProbeResult | undefined;
  readonly #listeners = new Map<string, Listener[]>();
  readonly #abort = new AbortController();

  /** `token` null: cookie authentication (`credentials: 'include'`). */
  constructor(url: string, token: string | null, fetchImpl: typeof fetch) {
    const headers: Record<string, string> = { accept: 'text/event-stream' };
    if (token !== null) headers.authorization = `Bearer ${token}`;
    void this.#run(fetchImpl, url, {
      headers,
      credentials: token === null ? 'include' : 'omit',
      cache: 'no-store',
      signal: this.#abort.signal,
    });
  }

  addEventListener(type: string, listener: Listener): void {
    this.#listeners.set(type, [...(this.#listeners.get(type) ?? []), listener]);
  }

  close(): void {
    this.readyState = 2;
    this.#abort.abort();
  }

  async #run(fetchImpl: typeof fetch, url: string, init: RequestInit): Promise<void> {
    let res: Response;
    try {
      res = await fetchImpl(url, init);
    } catch {
      this.#fail({ kind: 'unreachable' });
      return;
    }
    if (!res.ok || !res.body || !(res.headers.get('content-type') ?? '').includes('text/event-stream')) {
      this.#fail(await readRefusal(res));
      return;
    }
    if (this.readyState === 2) return;
    this.readyState = 1;
    this.onopen?.(new Event('open'));
    try {
      await this.#read(res.body);
    } catch {
      // aborted by close(), or the connection broke
    }
    this.#fail(undefined);
  }

  /** The `text/event-stream` format: fields up to a blank line make one event. */
  async #read(body: ReadableStream<Uint8Array>): Promise<void> {
    const reader = body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    let data: string[] = [];
    let event = '';
    let id = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done || this.readyState === 2) return;
      buffer += decoder.decode(value, { stream: true });
      const lines = buffer.split(/\r\n|\r|\n/);
      buffer = lines.pop() ?? '';
      for (const line of lines) {
        if (line === '') {
          if (data.length > 0) this.#dispatch(event || 'message', data.join('\n'), id);
          data = [];
          event = '';
          continue;
        }
        const colon = line.indexOf(':');
        if (colon === 0) continue; // a comment
        const field = colon < 0 ? line : line.slice(0, colon);
        const value = colon < 0 ? '' : line.slice(colon + (line[colon + 1] === ' ' ? 2 : 1));
        if (field === 'data') data.push(value);
        else if (field === 'event') event = value;
        else if (field === 'id') id = value;
      }
    }
  }

  #dispatch(type: string, data: string, lastEventId: string): void {
    if (this.readyState === 2) return;
    const ev = { data, lastEventId } as MessageEvent;
    if (type === 'message') this.onmessage?.(ev);
    for (const l of this.#listeners.get(type) ?? []) l(ev);
  }

  #fail(failure: ProbeResult | undefined): void {
    if (this.readyState === 2) return;
    this.readyState = 2;
    this.failure = failure;
    this.onerror?.(new Event('error'));
  }
}
