export { createRealtimeClient } from './client.js';
export {
  WS_PROTOCOL,
  type ConnectionState,
  type ConnectionStatus,
  type ErrorSeverity,
  type EventInfo,
  type EventSourceConstructor,
  type EventSourceLike,
  type PageLifecycle,
  type RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeError,
  type RealtimeErrorCode,
  type Snapshot,
  type TokenResult,
  type TransportKind,
  type Unsubscribe,
  type WebSocketConstructor,
  type WebSocketLike,
} from './api.js';
export * from './events.js';
export { decodeTokenTimes, refreshDelay, type TokenTimes } from './jwt.js';
export { fetchToken, TokenError } from './token.js';
export { topicMatches } from './interest.js';
export { safeHttpUrl } from './url.js';
export * from './state.js';
