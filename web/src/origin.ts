/**
 * Where the page is: each host has its own origin, `https://<host id>.<relay
 * name>:<port>/`, so that one host's pages cannot script against another's
 * sessions, ticket or player key in the same browser. The page runs only on the
 * origin of the host its ticket names, and moves there when opened elsewhere.
 */

import { keyText, parseKey } from "./keys.js";

/** The host id a hostname is the origin of, or `undefined` for a name that is not a host's. */
export function hostIdOfHostname(hostname: string): Uint8Array | undefined {
  const label = hostname.split(".")[0] ?? "";
  if (label.length !== 52) return undefined;
  try {
    return parseKey(label);
  } catch {
    return undefined;
  }
}

/** The hostname of `hostId`'s origin on the relay that serves `hostname` (a host's origin or the relay's own). */
export function hostnameFor(hostId: Uint8Array, hostname: string): string {
  const rest = hostIdOfHostname(hostname) !== undefined ? hostname.slice(hostname.indexOf(".") + 1) : hostname;
  return `${keyText(hostId)}.${rest}`;
}
