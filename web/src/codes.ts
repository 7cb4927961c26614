/**
 * The protocol's code spaces (PROTOCOL.md sections 7.3 and 11), each defined once
 * with its number, name and words. The error messages of the player read the words
 * from here, so a code cannot mean one thing in one place and another elsewhere.
 */

/** One known code: its number on the wire, its name as PROTOCOL.md spells it, and what it says happened. */
export interface Code {
  readonly value: number;
  readonly name: string;
  readonly words: string;
}

function table(codes: readonly Code[]): ReadonlyMap<number, Code> {
  return new Map(codes.map((code) => [code.value, code]));
}

/** Codes of `RESET` and `STOP` frames on session streams (section 11). */
export const StreamCode = {
  PEER_GONE: 0x100,
  REFUSED: 0x101,
  STALLED: 0x102,
  SESSION_IDLE: 0x103,
  DURATION_LIMIT: 0x104,
  BYTE_LIMIT: 0x105,
  CANCELLED: 0x106,
  PROTOCOL_VIOLATION: 0x107,
  SERVICE_UNAVAILABLE: 0x108,
  CLOSED: 0x109,
  MOVED: 0x10a,
} as const;

export const STREAM_CODES = table([
  { value: 0x100, name: "PEER_GONE", words: "the other side's relay connection went away (Enable Relay switched off, or it went offline)" },
  { value: 0x101, name: "REFUSED", words: "the session was refused" },
  { value: 0x102, name: "STALLED", words: "one side left the bytes sent to it unread past the stall timeout" },
  { value: 0x103, name: "SESSION_IDLE", words: "no data moved within the session idle timeout" },
  { value: 0x104, name: "DURATION_LIMIT", words: "the session reached its maximum duration" },
  { value: 0x105, name: "BYTE_LIMIT", words: "the session reached its maximum bytes in one direction" },
  { value: 0x106, name: "CANCELLED", words: "the other side cancelled the session while setting it up" },
  { value: 0x107, name: "PROTOCOL_VIOLATION", words: "the other side rejected what this side sent as a protocol violation" },
  { value: 0x108, name: "SERVICE_UNAVAILABLE", words: "the host could not reach the service it forwards to (is the media server running?)" },
  { value: 0x109, name: "CLOSED", words: "the other side closed the session" },
  { value: 0x10a, name: "MOVED", words: "the session moved to a direct path" },
]);

/** Codes of `CLOSE` frames (section 11, `CONNECTION_CLOSE`). */
export const CloseCode = {
  NORMAL: 0,
  REPLACED: 1,
  RELAY_SHUTDOWN: 2,
  IDLE: 3,
  SHED: 4,
  RELAY_DISABLED: 5,
  AT_CAPACITY: 6,
} as const;

export const CLOSE_CODES = table([
  { value: 0, name: "NORMAL", words: "closed normally" },
  { value: 1, name: "REPLACED", words: "replaced by a newer registration of this host id" },
  { value: 2, name: "RELAY_SHUTDOWN", words: "the relay is shutting down" },
  { value: 3, name: "IDLE", words: "closed by the relay: no registration and no session for its idle timeout" },
  { value: 4, name: "SHED", words: "closed by the relay at its connection cap: idle registration shed" },
  { value: 5, name: "RELAY_DISABLED", words: "the host switched Enable Relay off" },
  { value: 6, name: "AT_CAPACITY", words: "the relay is at capacity: try again later" },
]);

/** Codes of the relay's `Error` control message (section 7.3). */
export const ErrorCode = {
  BadRequest: 1,
  UnsupportedVersion: 2,
  HostOffline: 3,
  ProofFailed: 4,
  HostUnreachable: 5,
  Internal: 6,
  AtCapacity: 7,
  RateLimited: 8,
  HostBusy: 9,
  TokenRequired: 10,
  TokenExpired: 11,
  TokenWrongHost: 12,
  TokenInvalid: 13,
  TokenMalformed: 14,
} as const;

export const ERROR_CODES = table([
  { value: 1, name: "BadRequest", words: "bad request" },
  { value: 2, name: "UnsupportedVersion", words: "unsupported version" },
  { value: 3, name: "HostOffline", words: "host offline" },
  { value: 4, name: "ProofFailed", words: "proof of key possession failed" },
  { value: 5, name: "HostUnreachable", words: "host unreachable" },
  { value: 6, name: "Internal", words: "internal relay error" },
  { value: 7, name: "AtCapacity", words: "relay at capacity" },
  { value: 8, name: "RateLimited", words: "rate limited" },
  { value: 9, name: "HostBusy", words: "host has too many sessions" },
  { value: 10, name: "TokenRequired", words: "registration token required" },
  { value: 11, name: "TokenExpired", words: "registration token expired" },
  { value: 12, name: "TokenWrongHost", words: "registration token is for another host id" },
  { value: 13, name: "TokenInvalid", words: "registration token invalid" },
  { value: 14, name: "TokenMalformed", words: "registration token malformed" },
]);

/** The words of a code in `space`, or "unknown <what> 0x…" for a number this version does not know. */
export function describeCode(space: ReadonlyMap<number, Code>, what: string, value: number): string {
  return space.get(value)?.words ?? `unknown ${what} 0x${value.toString(16)}`;
}
