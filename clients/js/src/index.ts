export {
  createRealtimeClient,
  type ConnectionState,
  type EventSourceConstructor,
  type EventSourceLike,
  type RealtimeClient,
  type RealtimeClientOptions,
  type RealtimeError,
  type RealtimeErrorCode,
  type TokenResult,
  type TransportKind,
  type Unsubscribe,
  type WebSocketConstructor,
  type WebSocketLike,
} from './client.js';
export * from './events.js';
export { decodeTokenTimes, type TokenTimes } from './jwt.js';
