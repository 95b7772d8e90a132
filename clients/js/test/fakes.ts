/**
 * Test doubles for the browser's WebSocket and EventSource, driven by the test, plus
 * helpers to build envelopes and JWTs. No network anywhere.
 */
import type { EventSourceLike, WebSocketLike } from '../src/index.js';

export class FakeWebSocket implements WebSocketLike {
  static instances: FakeWebSocket[] = [];
  static reset(): void {
    FakeWebSocket.instances = [];
  }
  static last(): FakeWebSocket {
    const ws = FakeWebSocket.instances[FakeWebSocket.instances.length - 1];
    if (!ws) throw new Error('no WebSocket was created');
    return ws;
  }

  readyState = 0;
  /** What the fake gateway selects on open; '' = none. */
  protocol = '';
  readonly protocols: string[];
  sent: unknown[] = [];
  closedByClient: number | undefined;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;

  constructor(
    public readonly url: string,
    protocols?: string | string[],
  ) {
    this.protocols = protocols === undefined ? [] : Array.isArray(protocols) ? protocols : [protocols];
    FakeWebSocket.instances.push(this);
  }

  /** The token offered in `bearer.<token>`, if any. */
  get bearer(): string | undefined {
    return this.protocols.find((p) => p.startsWith('bearer.'))?.slice('bearer.'.length);
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  send(data: string): void {
    if (this.readyState !== 1) throw new Error('InvalidStateError');
    this.sent.push(JSON.parse(data));
  }

  close(code?: number): void {
    this.closedByClient = code ?? 1005;
    this.readyState = 3;
  }

  // ---- driven by tests ----
  /** The gateway accepts: selects realtime-gateway.v1 when it was offered. */
  open(): void {
    this.readyState = 1;
    if (this.protocols.includes('realtime-gateway.v1')) this.protocol = 'realtime-gateway.v1';
    this.onopen?.({} as Event);
  }
  receive(msg: unknown): void {
    this.onmessage?.({ data: typeof msg === 'string' ? msg : JSON.stringify(msg) } as MessageEvent);
  }
  serverClose(code: number, reason = ''): void {
    this.readyState = 3;
    this.onclose?.({ code, reason } as CloseEvent);
  }
  /** What a browser shows for a refused upgrade (401/403/429/503) or network error. */
  fail(): void {
    this.readyState = 3;
    this.onerror?.({} as Event);
    this.onclose?.({ code: 1006, reason: '' } as CloseEvent);
  }
}

export class FakeEventSource implements EventSourceLike {
  static instances: FakeEventSource[] = [];
  static reset(): void {
    FakeEventSource.instances = [];
  }
  static last(): FakeEventSource {
    const es = FakeEventSource.instances[FakeEventSource.instances.length - 1];
    if (!es) throw new Error('no EventSource was created');
    return es;
  }

  readyState = 0;
  closed = false;
  readonly withCredentials: boolean;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;
  private listeners = new Map<string, ((ev: MessageEvent) => void)[]>();

  constructor(
    public readonly url: string,
    init?: { withCredentials?: boolean },
  ) {
    this.withCredentials = init?.withCredentials ?? false;
    FakeEventSource.instances.push(this);
  }

  get query(): URLSearchParams {
    return new URL(this.url).searchParams;
  }

  addEventListener(type: string, listener: (ev: MessageEvent) => void): void {
    this.listeners.set(type, [...(this.listeners.get(type) ?? []), listener]);
  }

  close(): void {
    this.closed = true;
    this.readyState = 2;
  }

  // ---- driven by tests ----
  open(): void {
    if (this.closed) return;
    this.readyState = 1;
    this.onopen?.({} as Event);
  }
  /** An unnamed SSE event (`id:` + `data:`). */
  receive(envelope: { event_id: string }): void {
    if (this.closed) return;
    this.onmessage?.({ data: JSON.stringify(envelope), lastEventId: envelope.event_id } as MessageEvent);
  }
  /** A named SSE event (`event: <name>`), with the stream's last event id after it. */
  emit(name: string, data: unknown, lastEventId = ''): void {
    if (this.closed) return;
    for (const l of this.listeners.get(name) ?? []) l({ data: JSON.stringify(data), lastEventId } as MessageEvent);
  }
  /** Network error or non-200 answer: the browser fires `error`. */
  fail(readyState: 0 | 2 = 2): void {
    if (this.closed) return;
    this.readyState = readyState;
    this.onerror?.({} as Event);
  }
}

/**
 * A stand-in for the gateway's `GET /auth/check` (and a token endpoint): answers from a
 * queue the test fills, or with `fallback`. Every request is recorded.
 */
export class FakeFetch {
  calls: { url: string; init: RequestInit | undefined }[] = [];
  private answers: Response[] = [];
  constructor(private readonly fallback: () => Response | Promise<Response> = () => new Response(null, { status: 404 })) {}

  readonly fetch = async (input: RequestInfo | URL, init?: RequestInit): Promise<Response> => {
    this.calls.push({ url: String(input), init });
    const next = this.answers.shift();
    return next ?? (await this.fallback());
  };

  answer(...responses: Response[]): this {
    this.answers.push(...responses);
    return this;
  }

  probes(): { url: string; init: RequestInit | undefined }[] {
    return this.calls.filter((c) => c.url.endsWith('/auth/check'));
  }
}

/** A refusal as the gateway answers it (JSON body, Retry-After where it applies). */
export function refusal(status: number, error: string, reason: string, retryAfterSecs?: number): Response {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (retryAfterSecs !== undefined) headers['retry-after'] = String(retryAfterSecs);
  return new Response(JSON.stringify({ error, reason }), { status, headers });
}

export const admitted = (): Response => new Response(null, { status: 204 });

let seq = 0;

export function envelope(event_type: string, data: Record<string, unknown>, event_id = `evt-${++seq}`) {
  return {
    event_id,
    event_type,
    event_time: '2025-01-01T00:00:00Z',
    tenant_id: 'tenant-1',
    user_id: 'user-1',
    trace_id: 'trace',
    correlation_id: 'corr',
    producer: 'render-orchestrator',
    data,
  };
}

function b64url(s: string): string {
  const bytes = new TextEncoder().encode(s);
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
}

/** An unsigned JWT-shaped token; the client never verifies signatures. */
export function jwt(claims: Record<string, unknown>): string {
  return `${b64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }))}.${b64url(JSON.stringify(claims))}.sig`;
}

/** Lets awaited getToken() promises and other microtasks settle. */
export async function flush(): Promise<void> {
  for (let i = 0; i < 30; i++) await Promise.resolve();
}

/** A `text/event-stream` answer whose body the test writes to, as the gateway would. */
export function sseStream(): { response: Response; write: (text: string) => void; end: () => void } {
  let controller!: ReadableStreamDefaultController<Uint8Array>;
  const body = new ReadableStream<Uint8Array>({
    start(c) {
      controller = c;
    },
  });
  const encoder = new TextEncoder();
  return {
    response: new Response(body, { status: 200, headers: { 'content-type': 'text/event-stream' } }),
    write: (text) => controller.enqueue(encoder.encode(text)),
    end: () => controller.close(),
  };
}
