/**
 * AES-256-GCM with Noise's nonce encoding (PROTOCOL.md section 10.1): 4 zero bytes,
 * then the 8-byte big-endian message counter.
 *
 * Two implementations of one interface: WebCrypto's (`crypto.subtle`), which runs
 * natively and is what pages get where it exists (secure contexts), and
 * `@noble/ciphers` in JavaScript as the fallback. Both are asynchronous to the
 * caller, because WebCrypto is.
 */

import { gcm } from "@noble/ciphers/aes.js";

/** A key ready to seal and open messages. */
export interface AeadKey {
  /** Encrypts `plaintext` under `nonce` with associated data `ad`; the result carries a 16-byte tag. */
  seal(nonce: bigint, ad: Uint8Array, plaintext: Uint8Array): Promise<Uint8Array>;
  /** Decrypts and authenticates; rejects with {@link AeadError} when the message does not verify. */
  open(nonce: bigint, ad: Uint8Array, ciphertext: Uint8Array): Promise<Uint8Array>;
}

/** A way of doing AES-256-GCM. */
export interface Aead {
  /** For logs and tests: which implementation this is. */
  readonly name: string;
  /** Prepares a 32-byte key. */
  importKey(raw: Uint8Array): AeadKey;
}

/** A message failed authentication (or was shorter than a tag). */
export class AeadError extends Error {
  override readonly name = "AeadError";
}

/** Bytes the tag adds to every message. */
export const TAG_LEN = 16;

/** Noise's 12-byte nonce for AESGCM: 32 zero bits, then the counter big-endian. */
export function gcmNonce(counter: bigint): Uint8Array {
  const nonce = new Uint8Array(12);
  new DataView(nonce.buffer).setBigUint64(4, counter, false);
  return nonce;
}

/** `bytes` as WebCrypto takes it: backed by a plain ArrayBuffer (copied only if it is not). */
function plain(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return bytes.buffer instanceof ArrayBuffer ? (bytes as Uint8Array<ArrayBuffer>) : bytes.slice();
}

/** AES-GCM in JavaScript (`@noble/ciphers`), synchronous underneath. */
export const nobleAead: Aead = {
  name: "noble",
  importKey(raw: Uint8Array): AeadKey {
    const key = raw.slice();
    return {
      async seal(nonce, ad, plaintext) {
        return gcm(key, gcmNonce(nonce), ad).encrypt(plaintext);
      },
      async open(nonce, ad, ciphertext) {
        if (ciphertext.length < TAG_LEN) throw new AeadError("message shorter than its tag");
        try {
          return gcm(key, gcmNonce(nonce), ad).decrypt(ciphertext);
        } catch {
          throw new AeadError("message failed authentication");
        }
      },
    };
  },
};

/** AES-GCM through WebCrypto: `subtle` is `crypto.subtle` of a page, a worker or node. */
export function webCryptoAead(subtle: SubtleCrypto): Aead {
  return {
    name: "webcrypto",
    importKey(raw: Uint8Array): AeadKey {
      // Non-extractable: once imported, the page's own code cannot read the key back.
      const key = subtle.importKey("raw", raw.slice(), { name: "AES-GCM" }, false, [
        "encrypt",
        "decrypt",
      ]);
      return {
        async seal(nonce, ad, plaintext) {
          const out = await subtle.encrypt(
            { name: "AES-GCM", iv: plain(gcmNonce(nonce)), additionalData: plain(ad), tagLength: 128 },
            await key,
            plain(plaintext),
          );
          return new Uint8Array(out);
        },
        async open(nonce, ad, ciphertext) {
          if (ciphertext.length < TAG_LEN) throw new AeadError("message shorter than its tag");
          try {
            const out = await subtle.decrypt(
              { name: "AES-GCM", iv: plain(gcmNonce(nonce)), additionalData: plain(ad), tagLength: 128 },
              await key,
              plain(ciphertext),
            );
            return new Uint8Array(out);
          } catch {
            throw new AeadError("message failed authentication");
          }
        },
      };
    },
  };
}

/** WebCrypto's AES-GCM where this context has it, else the JavaScript one. */
export function defaultAead(): Aead {
  const subtle = (globalThis as { crypto?: Crypto }).crypto?.subtle;
  return subtle === undefined ? nobleAead : webCryptoAead(subtle);
}
