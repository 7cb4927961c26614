/**
 * What the page and its service worker keep on this origin, in IndexedDB: the
 * ticket, the player's static key, the transport setting and the cookies the
 * host set (the tunnel's jar).
 *
 * The key is stored as a `CryptoKey` where WebCrypto made it (IndexedDB keeps a
 * non-extractable key without ever exposing its bytes), and as 32 raw bytes where
 * the platform has no X25519 in WebCrypto. Each host has its own origin, so each
 * host sees a different player key from the same browser, and no host's pages can
 * reach another host's ticket or key.
 */

import type { Cookie } from "./cookies.js";
import { type StaticKey, generateWebCryptoKeyPair, rawStaticKey, webCryptoStaticKey } from "./statickey.js";
import { generateSecretKey } from "./noise.js";

const DB_NAME = "blindrelay";
const STORE = "player";

/** The stored form of the player's static key. */
type StoredKey =
  | { readonly kind: "webcrypto"; readonly privateKey: CryptoKey; readonly publicKey: Uint8Array }
  | { readonly kind: "raw"; readonly secret: Uint8Array };

/** How the page reaches the relay: WebTransport where it can, or WebSocket only. */
export type TransportSetting = "auto" | "websocket";

/** IndexedDB failed or is not there (a private window may refuse it). */
export class StoreError extends Error {
  override readonly name = "StoreError";
}

function request<T>(req: IDBRequest<T>): Promise<T> {
  return new Promise((resolve, reject) => {
    req.onsuccess = () => resolve(req.result);
    req.onerror = () => reject(new StoreError(`storage failed: ${req.error?.message ?? "unknown error"}`));
  });
}

async function open(): Promise<IDBDatabase> {
  const factory = (globalThis as { indexedDB?: IDBFactory }).indexedDB;
  if (factory === undefined) throw new StoreError("this browser gives the page no IndexedDB");
  const req = factory.open(DB_NAME, 1);
  req.onupgradeneeded = () => req.result.createObjectStore(STORE);
  return request(req);
}

async function get(name: string): Promise<unknown> {
  const db = await open();
  try {
    return await request(db.transaction(STORE, "readonly").objectStore(STORE).get(name));
  } finally {
    db.close();
  }
}

async function put(name: string, value: unknown): Promise<void> {
  const db = await open();
  try {
    const tx = db.transaction(STORE, "readwrite");
    tx.objectStore(STORE).put(value, name);
    await new Promise<void>((resolve, reject) => {
      tx.oncomplete = () => resolve();
      tx.onerror = () => reject(new StoreError(`storage failed: ${tx.error?.message ?? "unknown error"}`));
    });
  } finally {
    db.close();
  }
}

/** The stored ticket's text, if any. */
export async function loadTicket(): Promise<string | undefined> {
  const value = await get("ticket");
  return typeof value === "string" ? value : undefined;
}

export async function saveTicket(ticket: string): Promise<void> {
  await put("ticket", ticket);
}

export async function loadTransport(): Promise<TransportSetting> {
  return (await get("transport")) === "websocket" ? "websocket" : "auto";
}

export async function saveTransport(setting: TransportSetting): Promise<void> {
  await put("transport", setting);
}

/** The cookie jar's cookies as last saved, unchecked: `CookieJar` checks them as it takes them. */
export async function loadCookies(): Promise<unknown> {
  return get("cookies");
}

export async function saveCookies(cookies: readonly Cookie[]): Promise<void> {
  await put("cookies", cookies);
}

/** The player's static key, or `undefined` where the page has not made one yet. */
export async function loadStaticKey(): Promise<StaticKey | undefined> {
  const stored = (await get("key")) as StoredKey | undefined;
  if (stored === undefined) return undefined;
  if (stored.kind === "raw") return rawStaticKey(stored.secret);
  return webCryptoStaticKey(crypto.subtle, stored.privateKey, stored.publicKey);
}

/**
 * The player's static key, made and stored at the first visit: a non-extractable
 * WebCrypto key where the browser can make one, else raw bytes.
 */
export async function loadOrCreateStaticKey(): Promise<StaticKey> {
  const existing = await loadStaticKey();
  if (existing !== undefined) return existing;
  const pair = await generateWebCryptoKeyPair((globalThis as { crypto?: Crypto }).crypto?.subtle);
  const stored: StoredKey =
    pair !== undefined
      ? { kind: "webcrypto", privateKey: pair.privateKey, publicKey: pair.publicKey }
      : { kind: "raw", secret: generateSecretKey() };
  await put("key", stored);
  // Read back what was stored: two tabs opened at once must not end up with two keys.
  const kept = await loadStaticKey();
  if (kept === undefined) throw new StoreError("the player key was not kept");
  return kept;
}
