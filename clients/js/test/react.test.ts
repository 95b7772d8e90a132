// @vitest-environment jsdom
import { act, cleanup, render, renderHook } from '@testing-library/react';
import { createElement, StrictMode, type ReactNode } from 'react';
import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import { createRealtimeClient, type RealtimeClient } from '../src/index.js';
import {
  INITIAL_RENDER_PROGRESS,
  reduceRenderProgress,
  RealtimeProvider,
  useConnectionState,
  useNotifications,
  useRealtimeClient,
  useEventTypes,
  useRealtimeError,
  useRenderProgress,
} from '../src/react.js';
import type { NotificationCreated } from '../src/events.js';
import { envelope, FakeEventSource, FakeFetch, FakeWebSocket, flush } from './fakes.js';

let client: RealtimeClient;
let ws: FakeWebSocket;

beforeEach(async () => {
  FakeWebSocket.reset();
  FakeEventSource.reset();
  client = createRealtimeClient({
    url: 'https://rt.flatrender.example',
    getToken: async () => 'tok',
    WebSocketImpl: FakeWebSocket,
    EventSourceImpl: FakeEventSource,
    fetchImpl: new FakeFetch().fetch,
  });
  await flush();
  ws = FakeWebSocket.last();
});

afterEach(() => {
  cleanup();
  client.close();
});

const wrapper = ({ children }: { children: ReactNode }) => createElement(RealtimeProvider, { client }, children);

describe('useRenderProgress', () => {
  it('follows render.job.* events of its job only', () => {
    const { result } = renderHook(() => useRenderProgress('j1'), { wrapper });
    expect(result.current).toEqual({ status: 'unknown', progress: 0, resyncCount: 0 });
    act(() => {
      ws.open();
      ws.receive(envelope('render.job.queued.v1', { job_id: 'j1' }));
      ws.receive(envelope('render.job.started.v1', { job_id: 'j1' }));
      ws.receive(envelope('render.job.progress.v1', { job_id: 'j1', progress: 42, frame: 42, total_frames: 100 }));
      ws.receive(envelope('render.job.progress.v1', { job_id: 'other', progress: 99 }));
    });
    expect(result.current).toMatchObject({ status: 'progress', progress: 42, frame: 42, totalFrames: 100 });
    act(() => ws.receive(envelope('render.job.completed.v1', { job_id: 'j1', output_url: 'https://cdn/j1.mp4' })));
    expect(result.current).toMatchObject({ status: 'completed', progress: 100, outputUrl: 'https://cdn/j1.mp4' });
  });

  it('shows the state a snapshot carries, also after a resync', () => {
    const { result } = renderHook(() => useRenderProgress('j1'), { wrapper });
    act(() => {
      ws.open();
      ws.receive({ type: 'snapshot', events: [envelope('render.job.progress.v1', { job_id: 'j1', progress: 60 })], truncated: false });
    });
    expect(result.current).toMatchObject({ status: 'progress', progress: 60 });
    act(() => {
      ws.receive({ type: 'resync' });
      ws.receive({ type: 'snapshot', events: [envelope('render.job.completed.v1', { job_id: 'j1' })], truncated: false });
    });
    expect(result.current).toMatchObject({ status: 'completed', progress: 100, resyncCount: 1 });
  });

  it('watches its job with a snapshot and shows the state it carries on mount', async () => {
    act(() => ws.open());
    const { result } = renderHook(() => useRenderProgress('j9'), { wrapper });
    await act(async () => {
      await new Promise((r) => setTimeout(r, 80)); // the selection debounce
    });
    expect(ws.sent).toContainEqual({ type: 'watch', keys: ['j9'], snapshot: true });
    act(() => ws.receive({ type: 'snapshot', events: [envelope('render.job.started.v1', { job_id: 'j9' })], truncated: false }));
    expect(result.current.status).toBe('started');
  });

  it('starts from `initial`, the server-rendered state, until the gateway says more', () => {
    const initial = { status: 'progress' as const, progress: 30 };
    const { result, rerender } = renderHook(({ id }) => useRenderProgress(id, { initial }), {
      wrapper,
      initialProps: { id: 'j1' },
    });
    expect(result.current).toEqual({ ...initial, resyncCount: 0 });
    act(() => {
      ws.open();
      ws.receive(envelope('render.job.progress.v1', { job_id: 'j1', progress: 35, frame: 35 }));
    });
    expect(result.current).toMatchObject({ status: 'progress', progress: 35, frame: 35 });
    rerender({ id: 'j2' });
    expect(result.current).toMatchObject(initial);
  });

  it('resets when jobId changes and counts resyncs', () => {
    const { result, rerender } = renderHook(({ id }) => useRenderProgress(id), {
      wrapper,
      initialProps: { id: 'a' as string | null },
    });
    act(() => {
      ws.open();
      ws.receive(envelope('render.job.failed.v1', { job_id: 'a', reason: 'out of memory' }));
    });
    expect(result.current).toMatchObject({ status: 'failed', error: 'out of memory' });
    rerender({ id: 'b' });
    expect(result.current.status).toBe('unknown');
    act(() => ws.receive({ type: 'resync' }));
    expect(result.current.resyncCount).toBe(1);
    rerender({ id: null });
    expect(result.current.status).toBe('unknown');
  });
});

describe('useNotifications', () => {
  it('collects notification.created.v1 newest first and counts unread', () => {
    const { result } = renderHook(() => useNotifications({ max: 2 }), { wrapper });
    act(() => {
      ws.open();
      ws.receive(envelope('notification.created.v1', { notification_id: 'n1' }));
      ws.receive(envelope('notification.delivered.v1', { notification_id: 'n1' }));
      ws.receive(envelope('notification.created.v1', { notification_id: 'n2' }));
      ws.receive(envelope('notification.created.v1', { notification_id: 'n3' }));
    });
    expect(result.current.items.map((n) => n.data.notification_id)).toEqual(['n3', 'n2']);
    expect(result.current.unread).toBe(3);
    act(() => result.current.markAllRead());
    expect(result.current.unread).toBe(0);
    expect(result.current.items).toHaveLength(2);
  });

  it('two bells share one list per client, and a bell mounted again finds it kept', () => {
    const both = () => ({ a: useNotifications(), b: useNotifications({ max: 1 }) });
    const first = renderHook(both, { wrapper });
    act(() => {
      ws.open();
      ws.receive(envelope('notification.created.v1', { notification_id: 'n1' }));
      ws.receive(envelope('notification.created.v1', { notification_id: 'n2' }));
    });
    expect(first.result.current.a.items.map((n) => n.data.notification_id)).toEqual(['n2', 'n1']);
    expect(first.result.current.b.items.map((n) => n.data.notification_id)).toEqual(['n2']);
    act(() => first.result.current.b.markAllRead());
    expect(first.result.current.a.unread).toBe(0);
    act(() => ws.receive(envelope('notification.created.v1', { notification_id: 'n3' })));
    expect(first.result.current.a.unread).toBe(1);
    first.unmount(); // navigation: the bell goes, and comes back on the next page
    const again = renderHook(() => useNotifications(), { wrapper });
    expect(again.result.current.items.map((n) => n.data.notification_id)).toEqual(['n3', 'n2', 'n1']);
    expect(again.result.current.unread).toBe(1);
  });

  it('starts from a server-rendered list once, and live notifications go on top of it', () => {
    const listed = (id: string) => envelope('notification.created.v1', { notification_id: id }) as NotificationCreated;
    const initial = { items: [listed('s2'), listed('s1')], unread: 1 };
    const ids = (n: { items: NotificationCreated[] }) => n.items.map((i) => i.data.notification_id);
    const other = renderHook(() => useNotifications(), { wrapper });
    expect(other.result.current.items).toEqual([]);
    const bell = renderHook(() => useNotifications({ initial }), { wrapper });
    // The first paint shows it, and a bell already mounted hears of it.
    expect(ids(bell.result.current)).toEqual(['s2', 's1']);
    expect(ids(other.result.current)).toEqual(['s2', 's1']);
    act(() => {
      ws.open();
      ws.receive(envelope('notification.created.v1', { notification_id: 's2' })); // listed already
      ws.receive(envelope('notification.created.v1', { notification_id: 'n3' }));
    });
    expect(ids(bell.result.current)).toEqual(['n3', 's2', 's1']);
    expect(bell.result.current.unread).toBe(2);
    // A page rendered later by the server does not take the live list back.
    bell.unmount();
    const later = renderHook(() => useNotifications({ initial: { items: [listed('s1')], unread: 0 } }), { wrapper });
    expect(ids(later.result.current)).toEqual(['n3', 's2', 's1']);
  });
});

describe('selected event types follow mounted hooks', () => {
  const selections = () => ws.sent.filter((m) => ['subscribe', 'unsubscribe'].includes((m as { type: string }).type));
  const settle = () => act(() => new Promise<void>((r) => setTimeout(r, 80))); // past the 50 ms window

  it('the bell selects notification.#, progress adds render.job.#, unmounting takes it back', async () => {
    act(() => ws.open());
    const bell = renderHook(() => useNotifications(), { wrapper });
    await settle();
    expect(client.selection).toEqual(['notification.#']);
    expect(selections()).toEqual([{ type: 'subscribe', types: ['notification.#'] }]);
    act(() => ws.receive({ type: 'subscribed', types: ['notification.#'] }));

    // Two progress views in one render pass: one message.
    const progress = render(
      createElement(
        RealtimeProvider,
        { client },
        createElement(() => (useRenderProgress('j1'), useRenderProgress('j2'), null)),
      ),
    );
    await settle();
    expect(client.selection).toEqual(['notification.#', 'render.job.#']);
    expect(selections().slice(1)).toEqual([{ type: 'subscribe', types: ['render.job.#'] }]);
    act(() => ws.receive({ type: 'subscribed', types: ['notification.#', 'render.job.#'] }));

    progress.unmount();
    await settle();
    expect(selections().slice(2)).toEqual([{ type: 'unsubscribe', types: ['render.job.#'] }]);
    bell.unmount();
    expect(FakeWebSocket.instances).toHaveLength(1);
  });

  it('StrictMode mounting twice sends one subscribe; useEventTypes selects without a listener', async () => {
    act(() => ws.open());
    const strict = ({ children }: { children: ReactNode }) =>
      createElement(StrictMode, null, createElement(RealtimeProvider, { client }, children));
    const view = renderHook(({ types }) => useEventTypes(types), { wrapper: strict, initialProps: { types: ['billing.#'] } });
    await settle();
    expect(selections()).toEqual([{ type: 'subscribe', types: ['billing.#'] }]);
    view.rerender({ types: ['billing.#'] }); // a new array, same types: nothing to do
    await settle();
    expect(selections()).toHaveLength(1);
    view.unmount();
    expect(client.selection).toBeNull();
  });
});

describe('useConnectionState', () => {
  it('tracks the client state', () => {
    const { result } = renderHook(() => useConnectionState(), { wrapper });
    expect(result.current).toBe('connecting');
    act(() => ws.open());
    expect(result.current).toBe('open');
    act(() => ws.serverClose(1001));
    expect(result.current).toBe('reconnecting');
  });
});

describe('RealtimeProvider', () => {
  it('hooks throw outside a provider', () => {
    expect(() => renderHook(() => useRealtimeClient())).toThrow(/outside <RealtimeProvider>/);
  });

  it('with options, owns a client from the first render, disconnected on unmount (StrictMode-safe)', async () => {
    FakeWebSocket.reset();
    let seen: RealtimeClient | null = null;
    let tokenVersion = 'v1';
    function Probe() {
      seen = useRealtimeClient();
      return null;
    }
    const view = (token: string) =>
      createElement(
        StrictMode,
        null,
        createElement(RealtimeProvider, {
          options: {
            url: 'https://rt.flatrender.example',
            getToken: async () => token, // a new inline function every render
            WebSocketImpl: FakeWebSocket,
            fetchImpl: new FakeFetch().fetch,
            random: () => 0, // reconnect without waiting
          },
          children: createElement(Probe),
        }),
      );
    const { rerender, unmount } = render(view(tokenVersion));
    await act(async () => flush());
    expect(seen).not.toBeNull();
    // StrictMode mounted twice: one client, one live socket.
    const live = FakeWebSocket.instances.filter((s) => s.closedByClient === undefined);
    expect(live).toHaveLength(1);

    // The latest getToken is used on the next attempt without recreating the client.
    tokenVersion = 'v2';
    rerender(view(tokenVersion));
    const owned = seen!;
    await act(async () => {
      live[0]!.fail();
      await flush(); // the refusal probe (404 here) settles first
      await new Promise((r) => setTimeout(r, 0));
      await flush();
    });
    expect(seen).toBe(owned);
    expect(FakeWebSocket.last().bearer).toBe('v2');

    unmount();
    // Disconnected, not closed: StrictMode's unmount and mount again reuse the client.
    // It holds no socket, timer or listener, so nothing outlives the provider.
    expect(owned.state).toBe('disconnected');
    expect(FakeWebSocket.last().closedByClient).toBe(1000);
  });
});

describe('RealtimeProvider over SSE', () => {
  it('opens its first stream with the types of the hooks mounted with it, once', async () => {
    FakeEventSource.reset();
    function Bell() {
      useNotifications();
      return null;
    }
    const view = render(
      createElement(
        StrictMode,
        null,
        createElement(RealtimeProvider, {
          options: {
            url: 'https://rt.flatrender.example',
            getToken: async () => 'token',
            transport: 'sse',
            sseFetch: false,
            EventSourceImpl: FakeEventSource,
            fetchImpl: new FakeFetch().fetch,
          },
          children: createElement(Bell),
        }),
      ),
    );
    await act(async () => flush());
    const open = FakeEventSource.instances.filter((es) => !es.closed);
    expect(open).toHaveLength(1);
    expect(new URL(open[0]!.url).searchParams.get('types')).toBe('notification.#');
    // No stream of everything was opened first, not even by StrictMode's first client.
    for (const es of FakeEventSource.instances) {
      expect(new URL(es.url).searchParams.get('types')).toBe('notification.#');
    }
    view.unmount();
  });
});

describe('reduceRenderProgress', () => {
  it('clamps progress and treats a re-queue as a fresh start', () => {
    const progress = envelope('render.job.progress.v1', { job_id: 'j', progress: 140 }) as never;
    const after = reduceRenderProgress(INITIAL_RENDER_PROGRESS, progress);
    expect(after).toEqual({ status: 'progress', progress: 100 });
    const requeued = reduceRenderProgress(after, envelope('render.job.queued.v1', { job_id: 'j' }) as never);
    expect(requeued).toEqual({ status: 'queued', progress: 0 });
    const cancelled = reduceRenderProgress(requeued, envelope('render.job.cancelled.v1', { job_id: 'j' }) as never);
    expect(cancelled.status).toBe('cancelled');
  });
});

describe('review: links from event data', () => {
  const completed = (output_url: unknown) =>
    envelope('render.job.completed.v1', { job_id: 'j', output_url }) as never;

  it.each([
    ['javascript:', 'javascript:alert(document.cookie)'],
    ['data:', 'data:text/html,<script>alert(1)</script>'],
    ['relative', '/renders/j.mp4'],
    ['credentials', 'https://user:pw@cdn.example/x.mp4'],
  ])('a %s output_url never becomes outputUrl', (_, url) => {
    expect(reduceRenderProgress(INITIAL_RENDER_PROGRESS, completed(url)).outputUrl).toBeUndefined();
  });

  it('http(s) passes; an allow-list keeps foreign origins out', () => {
    const ok = 'https://cdn.flatrender.example/renders/j.mp4';
    expect(reduceRenderProgress(INITIAL_RENDER_PROGRESS, completed(ok)).outputUrl).toBe(ok);
    const allowedOrigins = ['https://cdn.flatrender.example'];
    expect(reduceRenderProgress(INITIAL_RENDER_PROGRESS, completed(ok), { allowedOrigins }).outputUrl).toBe(ok);
    const foreign = 'https://evil.example/renders/j.mp4';
    expect(reduceRenderProgress(INITIAL_RENDER_PROGRESS, completed(foreign), { allowedOrigins }).outputUrl).toBeUndefined();
  });

  it('useRenderProgress applies the allow-list', () => {
    const { result } = renderHook(() => useRenderProgress('j', { allowedOrigins: ['https://cdn.flatrender.example'] }), {
      wrapper,
    });
    act(() => {
      ws.open();
      ws.receive(envelope('render.job.completed.v1', { job_id: 'j', output_url: 'https://evil.example/x' }));
    });
    expect(result.current.status).toBe('completed');
    expect(result.current.outputUrl).toBeUndefined();
  });
});

describe('review: hostile event data does not break rendering', () => {
  it('data: null notifications and progress are skipped by the hooks', () => {
    const { result } = renderHook(() => ({ n: useNotifications(), p: useRenderProgress('j') }), { wrapper });
    act(() => {
      ws.open();
      ws.receive({ ...envelope('notification.created.v1', {}), data: null });
      ws.receive({ ...envelope('render.job.progress.v1', {}), data: null });
      ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 'lots' }));
    });
    expect(result.current.n.items).toEqual([]);
    expect(result.current.p.status).toBe('unknown');
  });
});

describe('errors reach the page', () => {
  function ShowError() {
    const error = useRealtimeError();
    const state = useConnectionState();
    return createElement('p', { id: 'err' }, `${state}: ${error?.code ?? '-'} ${error?.message ?? ''}`);
  }

  it('a missing url does not throw during render: useRealtimeError reports invalid_options, state closed', async () => {
    const onError = vi.fn();
    const { container } = render(
      createElement(RealtimeProvider, {
        options: { url: undefined as unknown as string, getToken: () => 'tok', onError },
        children: createElement(ShowError),
      }),
    );
    await act(async () => flush());
    expect(container.textContent).toMatch(/^closed: invalid_options realtime-client: `url` is required/);
    expect(onError).toHaveBeenCalledTimes(1);
  });

  it('with tokenUrl, a url given by neither the options nor the token answer is invalid_options too', async () => {
    FakeWebSocket.reset();
    const fetch = new FakeFetch(() => Response.json({ token: 'tok' }));
    const { container } = render(
      createElement(RealtimeProvider, {
        options: { tokenUrl: '/api/realtime-token', WebSocketImpl: FakeWebSocket, fetchImpl: fetch.fetch },
        children: createElement(ShowError),
      }),
    );
    await act(async () => flush());
    expect(container.textContent).toMatch(/^closed: invalid_options realtime-client: `url` is required/);
    expect(FakeWebSocket.instances).toHaveLength(0);
  });

  it('an error right at creation (getToken throws at once) still reaches the page', async () => {
    FakeWebSocket.reset();
    const { container } = render(
      createElement(RealtimeProvider, {
        options: {
          url: 'https://rt.flatrender.example',
          getToken: () => {
            throw new Error('no session');
          },
          WebSocketImpl: FakeWebSocket,
          backoff: { initialMs: 60_000 },
        },
        children: createElement(ShowError),
      }),
    );
    await act(async () => flush());
    expect(container.textContent).toBe('unauthorized: token_error no session');
  });

  it('a signed-out token endpoint shows as unauthorized with the status, and clears once open', async () => {
    let signedIn = false;
    const fetch = new FakeFetch(() =>
      signedIn ? new Response('good.jwt.token') : new Response('signed out', { status: 401 }),
    );
    FakeWebSocket.reset();
    const { container } = render(
      createElement(RealtimeProvider, {
        options: {
          url: 'https://rt.flatrender.example',
          tokenUrl: 'https://studio.example/api/realtime-token', // serializable: no functions
          WebSocketImpl: FakeWebSocket,
          fetchImpl: fetch.fetch,
          random: () => 0,
        },
        children: createElement(ShowError),
      }),
    );
    await act(async () => flush());
    expect(container.textContent).toBe('unauthorized: token_error token endpoint answered 401');
    expect(FakeWebSocket.instances).toHaveLength(0);

    signedIn = true;
    // Retries come at once (random() is 0): after a few 401s the client may already be
    // waiting for focus, as a signed-out page does; the user coming back gives it.
    window.dispatchEvent(new Event('focus'));
    await act(async () => {
      // The retry is due at once (random() is 0); give it a few turns of the event loop.
      for (let i = 0; i < 20 && FakeWebSocket.instances.length === 0; i++) {
        await new Promise((r) => setTimeout(r, 0));
        await flush();
      }
    });
    act(() => FakeWebSocket.last().open());
    expect(container.textContent).toBe('open: - ');
  });
});
