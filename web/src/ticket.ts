/**
 * Reading a ticket's text form (PROTOCOL.md section 5): the page needs the host id
 * it carries, and refuses text that is not a whole, undamaged ticket.
 *
 * The relay URL and direct addresses are checked for shape but not used: a page
 * reaches the host through the relay that served it, on its own origin, and a
 * browser cannot dial a direct address.
 */

import { sha256 } from "@noble/hashes/sha2.js";

import { KeyTextError, decodeBase32 } from "./keys.js";

/** Text that is not a ticket, or a damaged one. */
export class TicketError extends Error {
  override readonly name = "TicketError";
}

/** What the page takes from a ticket. */
export interface Ticket {
  /** The host's X25519 static public key. */
  readonly hostId: Uint8Array;
  /** The relay URL, as written in the ticket (empty when it names none). */
  readonly relayUrl: string;
}

const MAX_URL_LEN = 512;
const MAX_DIRECT_ADDRS = 8;

/** Reads a ticket from its text form `brt…`, by the decoder's rules of section 5.1. */
export function parseTicket(text: string): Ticket {
  const trimmed = text.trim();
  if (trimmed.slice(0, 3).toLowerCase() !== "brt") throw new TicketError("not a ticket: it does not start with brt");
  let bytes: Uint8Array;
  try {
    bytes = decodeBase32(trimmed.slice(3));
  } catch (err) {
    throw new TicketError(`not a ticket: ${err instanceof KeyTextError ? err.message : String(err)}`);
  }
  if (bytes.length < 4) throw new TicketError("the ticket is too short");
  const body = bytes.subarray(0, bytes.length - 4);
  const sum = sha256(body);
  for (let i = 0; i < 4; i++) {
    if (sum[i] !== bytes[body.length + i]) throw new TicketError("the ticket is damaged (its checksum does not match)");
  }
  if (body[0] !== 0x01) throw new TicketError(`unknown ticket version ${body[0] ?? "none"}`);
  let at = 1;
  const need = (n: number): Uint8Array => {
    if (at + n > body.length) throw new TicketError("the ticket ends too early");
    const out = body.subarray(at, at + n);
    at += n;
    return out;
  };
  const hostId = need(32).slice();
  const lenBytes = need(2);
  const urlLen = ((lenBytes[0] ?? 0) << 8) | (lenBytes[1] ?? 0);
  if (urlLen > MAX_URL_LEN) throw new TicketError(`the relay URL is ${urlLen} bytes, at most ${MAX_URL_LEN}`);
  let relayUrl: string;
  try {
    relayUrl = new TextDecoder("utf-8", { fatal: true }).decode(need(urlLen));
  } catch (err) {
    if (err instanceof TicketError) throw err;
    throw new TicketError("the relay URL is not UTF-8");
  }
  if (urlLen > 0 && !relayUrl.startsWith("blindrelay://")) throw new TicketError("the relay URL is not a blindrelay:// URL");
  const count = need(1)[0] ?? 0;
  if (count > MAX_DIRECT_ADDRS) throw new TicketError(`${count} direct addresses, at most ${MAX_DIRECT_ADDRS}`);
  for (let i = 0; i < count; i++) {
    const family = need(1)[0];
    if (family === 0x04) need(4 + 2);
    else if (family === 0x06) need(16 + 2);
    else throw new TicketError(`unknown address family ${family ?? "none"}`);
  }
  if (at !== body.length) throw new TicketError("the ticket has bytes after its last field");
  if (urlLen === 0 && count === 0) throw new TicketError("the ticket names neither a relay nor a direct address");
  return { hostId, relayUrl };
}
