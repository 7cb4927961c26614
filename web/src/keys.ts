/**
 * The text form of keys, host ids and relay pins (PROTOCOL.md sections 2, 3.2, 4.3):
 * base32 of RFC 4648 without padding, written in lower case and read in either case.
 *
 * A page gets a host id as text (from a ticket, a link or a person), so it must read
 * it by the same rules as the reference tools: a host id that two readers took
 * differently would send the player's hello to a different key.
 */

const ALPHABET = "abcdefghijklmnopqrstuvwxyz234567";

/** Text that is not the base32 of a key. */
export class KeyTextError extends Error {
  override readonly name = "KeyTextError";
}

/** Lower-case base32 of `bytes`, without padding. */
export function encodeBase32(bytes: Uint8Array): string {
  let out = "";
  let acc = 0;
  let bits = 0;
  for (const byte of bytes) {
    acc = ((acc << 8) | byte) & 0xfff;
    bits += 8;
    while (bits >= 5) {
      bits -= 5;
      out += ALPHABET[(acc >> bits) & 31];
    }
  }
  if (bits > 0) out += ALPHABET[(acc << (5 - bits)) & 31];
  return out;
}

/**
 * Bytes from base32 in either case. Refuses padding, any other character (whitespace
 * included), a length that whole bytes cannot give, and unused trailing bits that are
 * not zero: each byte string has exactly one text form, as section 2 requires.
 */
export function decodeBase32(text: string): Uint8Array {
  // 1, 3 and 6 characters left over carry fewer than 8 bits beyond a whole group.
  if ([1, 3, 6].includes(text.length % 8)) {
    throw new KeyTextError(`base32 of ${text.length} characters cannot encode whole bytes`);
  }
  const out = new Uint8Array(Math.floor((text.length * 5) / 8));
  let acc = 0;
  let bits = 0;
  let at = 0;
  for (const ch of text.toLowerCase()) {
    const value = ALPHABET.indexOf(ch);
    if (value < 0) throw new KeyTextError(`not a base32 character: ${JSON.stringify(ch)}`);
    acc = ((acc << 5) | value) & 0xfff;
    bits += 5;
    if (bits >= 8) {
      bits -= 8;
      out[at++] = (acc >> bits) & 0xff;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) throw new KeyTextError("base32 with unused trailing bits that are not zero");
  return out;
}

/**
 * A 32-byte key from its text form: a host id, a player key or a relay pin. Leading
 * and trailing whitespace is trimmed; the rest must be base32 of exactly 32 bytes.
 */
export function parseKey(text: string): Uint8Array {
  const bytes = decodeBase32(text.trim());
  if (bytes.length !== 32) throw new KeyTextError(`a key is 32 bytes, this text holds ${bytes.length}`);
  return bytes;
}

/** The text form of a 32-byte key: 52 lower-case base32 characters. */
export function keyText(key: Uint8Array): string {
  if (key.length !== 32) throw new KeyTextError(`a key is 32 bytes, not ${key.length}`);
  return encodeBase32(key);
}
