// @vitest-environment jsdom
// The React side of issue 26: `enabled`, errors that clear, the client on the first
// render, generic hooks. Each test failed on the client before its fix.
import { act, cleanup, render } from '@testing-library/react';
import { createElement, type ReactNode } from 'react';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import type { ConnectionStatus, RealtimeClient } from '../src/index.js';
import {
  RealtimeProvider,
  useConnectionState,
  useConnectionStatus,
  useEvent,
  useRealtimeClient,
  useRealtimeError,
} from '../src/react.js';
import { envelope, FakeEventSource, FakeFetch, FakeWebSocket, flush } from './fakes.js';

beforeEach(() => {
  FakeWebSocket.reset();
  FakeEventSource.reset();
});
afterEach(() => cleanup());

const options = {
  url: 'https://rt.flatrender.example',
  getToken: async () => 'tok',
  WebSocketImpl: FakeWebSocket,
  EventSourceImpl: FakeEventSource,
  fetchImpl: new FakeFetch().fetch,
};

function Badge() {
  return createElement('span', { 'data-testid': 'state' }, useConnectionState());
}

function provider(props: { enabled?: boolean }, children: ReactNode = createElement(Badge)) {
  return createElement(RealtimeProvider, { options, ...props, children });
}

describe('issue 26 #3: enabled on the provider', () => {
  it('enabled={false} connects nothing and says disconnected; true connects', async () => {
    const view = render(provider({ enabled: false }));
    await act(async () => flush());
    expect(FakeWebSocket.instances).toHaveLength(0);
    expect(view.getByTestId('state').textContent).toBe('disconnected');
    view.rerender(provider({ enabled: true }));
    await act(async () => flush());
    expect(FakeWebSocket.instances).toHaveLength(1);
    act(() => FakeWebSocket.last().open());
    expect(view.getByTestId('state').textContent).toBe('open');
    view.rerender(provider({ enabled: false }));
    await act(async () => flush());
    expect(FakeWebSocket.last().closedByClient).toBe(1000);
    expect(view.getByTestId('state').textContent).toBe('disconnected');
  });
});

describe('issue 26 #2: the page shows only what keeps it from being live', () => {
  it('useRealtimeError stays null on an open page that saw a bad event', async () => {
    function Banner() {
      const error = useRealtimeError();
      return createElement('p', { 'data-testid': 'error' }, error ? `${error.severity} ${error.code}` : '-');
    }
    const view = render(provider({}, createElement(Banner)));
    await act(async () => flush());
    act(() => {
      FakeWebSocket.last().open();
      FakeWebSocket.last().receive(envelope('render.job.progress.v1', { job_id: 'j', progress: null }));
      FakeWebSocket.last().receive({ type: 'error', reason: 'refresh_expired' });
    });
    expect(view.getByTestId('error').textContent).toBe('-');
    act(() => FakeWebSocket.last().serverClose(4003, 'revoked'));
    expect(view.getByTestId('error').textContent).toBe('fatal revoked');
  });
});

describe('issue 26 #9: what React developers expect', () => {
  it('useRealtimeClient() has the client on the first render', () => {
    const seen: (RealtimeClient | null)[] = [];
    function Probe() {
      seen.push(useRealtimeClient());
      return null;
    }
    render(provider({}, createElement(Probe)));
    expect(seen[0]).not.toBeNull();
  });

  it('any data option makes a new client, not only five of them', async () => {
    const seen: (RealtimeClient | null)[] = [];
    function Probe() {
      seen.push(useRealtimeClient());
      return null;
    }
    const view = render(createElement(RealtimeProvider, { options: { ...options, pingIntervalMs: 20_000 }, children: createElement(Probe) }));
    await act(async () => flush());
    view.rerender(createElement(RealtimeProvider, { options: { ...options, pingIntervalMs: 30_000 }, children: createElement(Probe) }));
    await act(async () => flush());
    expect(new Set(seen).size).toBe(2);
    // The first client let go of its socket.
    expect(FakeWebSocket.instances[0]!.closedByClient).toBe(1000);
  });

  it('useEvent(types, handler): selects the types, calls the latest handler, typed', async () => {
    const got: string[] = [];
    function Comments({ prefix }: { prefix: string }) {
      useEvent('render.job.progress.v1', (e) => got.push(`${prefix}${e.data.progress}`));
      return null;
    }
    const view = render(provider({}, createElement(Comments, { prefix: 'a' })));
    await act(async () => flush());
    const ws = FakeWebSocket.last();
    expect(ws.query.get('types')).toBe('render.job.progress.v1');
    view.rerender(provider({}, createElement(Comments, { prefix: 'b' })));
    act(() => {
      ws.open();
      ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 5 }));
      ws.receive(envelope('render.job.progress.v1', { job_id: 'j', progress: 'x' }));
      ws.receive(envelope('render.job.started.v1', { job_id: 'j' }));
    });
    expect(got).toEqual(['b5']);
  });

  it('useConnectionStatus(): the state with its reason and the next retry', async () => {
    let status: ConnectionStatus | undefined;
    function Probe() {
      status = useConnectionStatus();
      return null;
    }
    render(createElement(RealtimeProvider, { options: { ...options, probe: false, random: () => 0.5 }, children: createElement(Probe) }));
    await act(async () => flush());
    const before = Date.now();
    act(() => FakeWebSocket.last().fail());
    expect(status).toMatchObject({ state: 'reconnecting', transport: 'websocket' });
    expect(status!.reason).toBe('connect_failed');
    expect(status!.retryAt! - before).toBeGreaterThanOrEqual(400);
    expect(status!.retryAt! - before).toBeLessThanOrEqual(600);
  });
});
