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
  sent: unknown[] = [];
  closedByClient: number | undefined;
  onopen: ((ev: Event) => void) | null = null;
  onmessage: ((ev: MessageEvent) => void) | null = null;
  onclose: ((ev: CloseEvent) => void) | null = null;
  onerror: ((ev: Event) => void) | null = null;

  constructor(public readonly url: string) {
    FakeWebSocket.instances.push(this);
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
  open(): void {
    this.readyState = 1;
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
  /** A named SSE event (`event: <name>`). */
  emit(name: string, data: unknown): void {
    if (this.closed) return;
    for (const l of this.listeners.get(name) ?? []) l({ data: JSON.stringify(data) } as MessageEvent);
  }
  /** Network error or non-200 answer: the browser fires `error`. */
  fail(readyState: 0 | 2 = 2): void {
    if (this.closed) return;
    this.readyState = readyState;
    this.onerror?.({} as Event);
  }
}

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
  for (let i = 0; i < 10; i++) await Promise.resolve();
}
