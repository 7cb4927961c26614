/**
 * The control messages a player exchanges with the relay (PROTOCOL.md section 7):
 * it writes `Connect` and reads `Connected`, `Error`, or, from a member of a relay
 * pool that does not hold the host, `Redirect` (section 18.4).
 *
 * A frame is a 2-byte length (2 to 1024), the version byte 0x01, a kind byte and a
 * body of exactly the kind's size. The decoder applies the same rules as the
 * relay's (section 7.2): a length out of range is refused from the prefix alone,
 * trailing bytes are an error, an `Error` reason is at most 256 bytes of UTF-8, and
 * an error code this version does not know still decodes.
 */

import { ERROR_CODES, describeCode } from "./codes.js";
import { Reader, decodeUtf8, readU16 } from "./bytes.js";

/** `PROTOCOL_VERSION`: the version byte of every control message. */
export const PROTOCOL_VERSION = 0x01;

/** Largest length a control frame's prefix may announce. */
export const MAX_CONTROL_FRAME_LEN = 1024;

/** Longest `Error` reason, in bytes. */
export const MAX_REASON_LEN = 256;

/** The kind bytes of section 7.1. */
export const ControlKind = {
  Register: 0x01,
  Challenge: 0x02,
  Proof: 0x03,
  Registered: 0x04,
  GoingAway: 0x05,
  Dial: 0x06,
  Redirect: 0x07,
  Move: 0x08,
  Connect: 0x10,
  Connected: 0x11,
  Incoming: 0x12,
  Accept: 0x13,
  Error: 0x7f,
} as const;

const KIND_NAMES = new Map<number, string>(Object.entries(ControlKind).map(([name, kind]) => [kind, name]));

/** What the relay allows a session (section 7.5); 0 means no limit. Byte counts and rates are per direction. */
export interface SessionLimits {
  /** Bytes per second this session may move in each direction. */
  readonly rate: bigint;
  /** Bytes per second all of the host's sessions together may move in each direction. */
  readonly hostRate: bigint;
  /** Bytes the relay forwards in one direction before it ends the session. */
  readonly maxBytes: bigint;
  /** Seconds before the relay ends the session. */
  readonly maxDuration: number;
  /** Seconds without a byte in either direction before the relay ends the session. */
  readonly idleTimeout: number;
  /** Seconds a side may leave the bytes sent to it unread before the relay ends the session. */
  readonly stallTimeout: number;
}

/** A control message addressed to a player. */
export type PlayerControl =
  | { readonly kind: "connected"; readonly sessionId: bigint; readonly limits: SessionLimits }
  | { readonly kind: "error"; readonly code: number; readonly reason: string }
  /** Ask these pool members instead, the first first (section 18.4). */
  | { readonly kind: "redirect"; readonly members: readonly string[] };

/** Most members a `Redirect` or `Move` names (section 18.3). */
export const MAX_REDIRECT_MEMBERS = 3;

/** Longest member name, in bytes (section 18.1). */
export const MAX_MEMBER_NAME_LEN = 253;

/** Why a control frame was refused. */
export type ControlErrorKind =
  /** The length prefix is over 1024. */
  | "too-long"
  /** The length prefix is under 2, or the body is shorter than its kind's. */
  | "truncated"
  /** Bytes follow the message's fields. */
  | "trailing-bytes"
  /** The version byte is not 0x01. */
  | "unsupported-version"
  /** A kind byte not in the table of section 7.1. */
  | "unknown-kind"
  /** A kind that exists but is not sent to a player. */
  | "unexpected-kind"
  /** An `Error` reason over 256 bytes. */
  | "reason-too-long"
  /** An `Error` reason that is not UTF-8. */
  | "invalid-utf8"
  /** A host id that is not 32 bytes, given to {@link encodeConnect}. */
  | "bad-host-id"
  /** A redirect count present as 0 (0 is written by leaving it out), or one over 255 given to {@link encodeConnect}. */
  | "bad-redirect-count"
  /** A member list that names no member, more than three, or one twice (section 18.3). */
  | "bad-member-list"
  /** A member name that is not a canonical `host:port` (section 18.1). */
  | "bad-member-name";

/** A control frame that breaks section 7.2. */
export class ControlError extends Error {
  override readonly name = "ControlError";

  constructor(
    /** Which rule it broke. */
    readonly kind: ControlErrorKind,
    message: string,
  ) {
    super(message);
  }
}

/**
 * The `Connect { host id, redirects }` frame, length prefix included: 36 bytes, or
 * 37 with a redirect count (how many `Redirect`s were followed to send it, section
 * 18.4). A count of 0 is written by leaving it out, as section 7.2 requires.
 */
export function encodeConnect(hostId: Uint8Array, redirects = 0): Uint8Array {
  if (hostId.length !== 32) throw new ControlError("bad-host-id", "a host id is 32 bytes");
  if (!Number.isInteger(redirects) || redirects < 0 || redirects > 255) {
    throw new ControlError("bad-redirect-count", `a redirect count is 0 to 255, not ${redirects}`);
  }
  const out = new Uint8Array(redirects === 0 ? 36 : 37);
  out[1] = out.length - 2;
  out[2] = PROTOCOL_VERSION;
  out[3] = ControlKind.Connect;
  out.set(hostId, 4);
  if (redirects !== 0) out[36] = redirects;
  return out;
}

/**
 * Checks a frame's 2-byte length prefix and returns the length of what follows it.
 * A length over 1024 is refused here, before its body is read.
 */
export function controlFrameLength(prefix: Uint8Array): number {
  const len = readU16(prefix, 0);
  if (len > MAX_CONTROL_FRAME_LEN) {
    throw new ControlError("too-long", `control frame of ${len} bytes (max ${MAX_CONTROL_FRAME_LEN})`);
  }
  if (len < 2) throw new ControlError("truncated", `control frame of ${len} bytes (min 2)`);
  return len;
}

/** Decodes a frame's content (everything after the length prefix) sent to a player. */
export function decodePlayerControl(content: Uint8Array): PlayerControl {
  const r = new Reader(content);
  const version = need(r.u8());
  if (version !== PROTOCOL_VERSION) {
    throw new ControlError("unsupported-version", `unsupported version ${version} (this side speaks ${PROTOCOL_VERSION})`);
  }
  const kind = need(r.u8());
  let message: PlayerControl;
  switch (kind) {
    case ControlKind.Connected:
      message = { kind: "connected", sessionId: need(r.u64()), limits: decodeLimits(r) };
      break;
    case ControlKind.Error: {
      const code = need(r.u16());
      const len = need(r.u16());
      if (len > MAX_REASON_LEN) {
        throw new ControlError("reason-too-long", `error reason of ${len} bytes (max ${MAX_REASON_LEN})`);
      }
      const reason = decodeUtf8(need(r.take(len)));
      if (reason === undefined) throw new ControlError("invalid-utf8", "error reason is not UTF-8");
      message = { kind: "error", code, reason };
      break;
    }
    case ControlKind.Redirect:
      message = { kind: "redirect", members: decodeMembers(r) };
      break;
    default: {
      const name = KIND_NAMES.get(kind);
      if (name === undefined) {
        throw new ControlError("unknown-kind", `unknown control message kind 0x${kind.toString(16).padStart(2, "0")}`);
      }
      throw new ControlError("unexpected-kind", `${name} is not a message for a player`);
    }
  }
  if (r.remaining() !== 0) {
    throw new ControlError("trailing-bytes", `${r.remaining()} bytes after the message`);
  }
  return message;
}

/** The words of a relay `Error` code; a code this version does not know by its number. */
export function describeErrorCode(code: number): string {
  return describeCode(ERROR_CODES, "error code", code);
}

/**
 * Takes one whole control frame off the front of `bytes` if it has arrived.
 * Returns the message and how many bytes it used, or `undefined` when more are needed.
 */
export function takePlayerControl(bytes: Uint8Array): { message: PlayerControl; used: number } | undefined {
  if (bytes.length < 2) return undefined;
  const len = controlFrameLength(bytes);
  if (bytes.length < 2 + len) return undefined;
  return { message: decodePlayerControl(bytes.subarray(2, 2 + len)), used: 2 + len };
}

/**
 * Whether `name` is a member name in canonical form (section 18.1, by the rules of
 * a relay URL's authority, sections 4.1 and 4.2): a lower-case DNS name or IPv4
 * address, or an IPv6 address in brackets, then `:` and a port from 1 to 65535 in
 * decimal without leading zeros; at most 253 bytes.
 */
export function isCanonicalMemberName(name: string): boolean {
  if (name.length === 0 || name.length > MAX_MEMBER_NAME_LEN) return false;
  let host: string;
  let port: string;
  if (name.startsWith("[")) {
    const close = name.indexOf("]");
    if (close < 0 || name[close + 1] !== ":") return false;
    host = name.slice(1, close);
    port = name.slice(close + 2);
    if (!isIpv6(host) || host !== host.toLowerCase()) return false;
  } else {
    const colon = name.lastIndexOf(":");
    if (colon < 0) return false;
    host = name.slice(0, colon);
    port = name.slice(colon + 1);
    if (!/^[a-z0-9.-]{1,253}$/.test(host)) return false;
  }
  if (!/^[1-9][0-9]{0,4}$/.test(port)) return false;
  return Number(port) <= 65535;
}

/** An IPv6 address as a relay URL may hold it (no zone), by the URL parser's rules. */
function isIpv6(text: string): boolean {
  if (!/^[0-9a-fA-F:.]+$/.test(text)) return false;
  try {
    return new URL(`http://[${text}]/`).hostname.length > 2;
  } catch {
    return false;
  }
}

/** A member list (section 18.3): a count of 1 to 3, then each name with a one-byte length. */
function decodeMembers(r: Reader): string[] {
  const count = need(r.u8());
  if (count === 0 || count > MAX_REDIRECT_MEMBERS) {
    throw new ControlError("bad-member-list", `a member list names 1 to ${MAX_REDIRECT_MEMBERS} members, not ${count}`);
  }
  const members: string[] = [];
  for (let i = 0; i < count; i++) {
    const bytes = need(r.take(need(r.u8())));
    // Member names are ASCII; anything else is not canonical.
    const name = bytes.every((b) => b < 0x80) ? String.fromCharCode(...bytes) : "";
    if (!isCanonicalMemberName(name)) throw new ControlError("bad-member-name", "a member name is not host:port in canonical form");
    if (members.includes(name)) throw new ControlError("bad-member-list", "a member list names a member twice");
    members.push(name);
  }
  return members;
}

function decodeLimits(r: Reader): SessionLimits {
  return {
    rate: need(r.u64()),
    hostRate: need(r.u64()),
    maxBytes: need(r.u64()),
    maxDuration: need(r.u32()),
    idleTimeout: need(r.u32()),
    stallTimeout: need(r.u32()),
  };
}

function need<T>(value: T | undefined): T {
  if (value === undefined) throw new ControlError("truncated", "control message shorter than its kind");
  return value;
}
