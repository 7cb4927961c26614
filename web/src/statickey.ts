/**
 * The player's static key, in either of the two forms a browser can keep it in.
 *
 * Where the platform's WebCrypto has X25519, the page generates the key there as a
 * non-extractable `CryptoKey`: a script on the origin can use it while the page is
 * open, but cannot read the secret out, copy it elsewhere or leave it in a crash
 * dump as bytes. Where it lacks X25519, the secret is 32 random bytes and the
 * agreement runs in `@noble/curves`. The Noise handshake takes either through
 * {@link StaticKey}: only the two agreements with the player's static key (`ss`,
 * `se`) need the secret, and they are asynchronous so that WebCrypto can do them.
 */

import { x25519 } from "@noble/curves/ed25519.js";

/** What the handshake needs of the player's static key. */
export interface StaticKey {
  /** The 32-byte X25519 public key: the player key a host lists in `authorized_players`. */
  readonly publicKey: Uint8Array;
  /** X25519(secret, `pub`), or `undefined` where the result is all-zero or `pub` is unusable. */
  dh(pub: Uint8Array): Promise<Uint8Array | undefined>;
  /** `"webcrypto"` for a non-extractable `CryptoKey`, `"raw"` for bytes in script memory. */
  readonly kind: "webcrypto" | "raw";
}

/** A static key from its 32 secret bytes, agreements in `@noble/curves`. */
export function rawStaticKey(secret: Uint8Array): StaticKey {
  if (secret.length !== 32) throw new RangeError("an X25519 secret key is 32 bytes");
  const kept = secret.slice();
  return {
    kind: "raw",
    publicKey: x25519.getPublicKey(kept),
    async dh(pub: Uint8Array): Promise<Uint8Array | undefined> {
      let shared: Uint8Array;
      try {
        shared = x25519.getSharedSecret(kept, pub);
      } catch {
        // noble refuses low-order points before running the ladder.
        return undefined;
      }
      return shared.some((b) => b !== 0) ? shared : undefined;
    },
  };
}

/** A static key whose secret is a WebCrypto `CryptoKey` (non-extractable where it was made so). */
export function webCryptoStaticKey(subtle: SubtleCrypto, privateKey: CryptoKey, publicKey: Uint8Array): StaticKey {
  const kept = publicKey.slice();
  return {
    kind: "webcrypto",
    publicKey: kept,
    async dh(pub: Uint8Array): Promise<Uint8Array | undefined> {
      try {
        const remote = await subtle.importKey("raw", pub.slice(), { name: "X25519" }, true, []);
        const bits = await subtle.deriveBits({ name: "X25519", public: remote }, privateKey, 256);
        const shared = new Uint8Array(bits);
        // WebCrypto refuses an all-zero result itself; checked again so that both forms agree.
        return shared.some((b) => b !== 0) ? shared : undefined;
      } catch {
        return undefined;
      }
    },
  };
}

/** A fresh key pair made by WebCrypto with a non-extractable private key. */
export interface WebCryptoKeyPair {
  readonly privateKey: CryptoKey;
  readonly publicKey: Uint8Array;
}

/**
 * Makes a new X25519 key pair in WebCrypto, the private half non-extractable, or
 * `undefined` where the platform has no X25519 there.
 */
export async function generateWebCryptoKeyPair(subtle: SubtleCrypto | undefined): Promise<WebCryptoKeyPair | undefined> {
  if (subtle === undefined) return undefined;
  try {
    const pair = (await subtle.generateKey({ name: "X25519" }, false, ["deriveBits"])) as CryptoKeyPair;
    const publicKey = new Uint8Array(await subtle.exportKey("raw", pair.publicKey));
    if (publicKey.length !== 32) return undefined;
    return { privateKey: pair.privateKey, publicKey };
  } catch {
    return undefined;
  }
}
