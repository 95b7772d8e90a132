// @vitest-environment jsdom
// The React side of issue 26: `enabled`, errors that clear, the client on the first
// render, generic hooks. Each test failed on the client before its fix.
import { act, cleanup, render } from '@testing-library/react';
import { createElement, type ReactNode } from 'react';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { RealtimeProvider, useConnectionState, useRealtimeError } from '../src/react.js';
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
