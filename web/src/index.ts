/**
 * The browser player's protocol core: what a page needs to reach a host through the
 * relay over WebTransport or WebSocket, with the Noise session end to end.
 */

export { type Aead, defaultAead, nobleAead, webCryptoAead } from "./aead.js";
export { CLOSE_CODES, ERROR_CODES, STREAM_CODES, CloseCode, ErrorCode, StreamCode } from "./codes.js";
export { ControlError, type SessionLimits, decodePlayerControl, encodeConnect } from "./control.js";
export { KeyTextError, decodeBase32, encodeBase32, keyText, parseKey } from "./keys.js";
export { FrameDecoder, FrameError, type StreamFrame, encodeFrame } from "./frames.js";
export { type Hello, NoiseError, PlayerHandshake, Transport, deriveResumeId, generateSecretKey, publicKey } from "./noise.js";
export { AckClock, DEFAULT_REPLAY_WINDOW, DEFAULT_RESUME_WINDOW_MS, MAX_REPLAY_WINDOW, ReplayBuffer } from "./resume.js";
export {
  type ConnectOptions,
  type PlayerSession,
  type Route,
  SessionError,
  type SetupStep,
  type StreamLink,
  type TransportName,
  type WebSocketLike,
  connectPlayer,
  mendable,
  relayWebSocketUrl,
} from "./session.js";
export { type StaticKey, generateWebCryptoKeyPair, rawStaticKey, webCryptoStaticKey } from "./statickey.js";
export { type Ticket, TicketError, parseTicket } from "./ticket.js";
export { type ConnectBase, RelayTransports, type RelayTransportsOptions, type WebTransportInfo, parseInfo } from "./transport.js";
export { type WebTransportLike, type WebTransportStreamLike, WebTransportLink } from "./webtransport.js";
export { HttpError, type HttpRequest, type HttpResponseHead, ResponseReader, encodeRequest } from "./http1.js";
export { Tunnel, type TunnelOptions, type TunnelResponse } from "./tunnel.js";
