/**
 * The script the worker puts in front of the host's pages: `/.blindrelay/ws.js`,
 * which carries the page's WebSockets to its own origin through the tunnel
 * (src/ws.ts). A service worker never sees a page's WebSockets, so the page has to
 * open them itself, and the script must run before the page's own.
 *
 * It goes in as the document's first element: after a byte order mark, blank
 * space, comments and the doctype (before it, the page would be parsed in quirks
 * mode), before anything else. Only the first {@link MAX_LOOKAHEAD} bytes are
 * looked at and held; the rest of the body streams through untouched.
 */

/** The element the worker inserts: from the relay's own path, never inline, so a strict policy can allow it as `'self'`. */
export const SHIM_TAG = '<script src="/.blindrelay/ws.js"></script>';

/** The most bytes held back while looking for where the tag goes. */
export const MAX_LOOKAHEAD = 1024;

/**
 * Where the tag goes in a document that starts with `bytes`: an offset, or
 * `undefined` while more bytes could change it (`final`: there are no more).
 */
export function shimOffset(bytes: Uint8Array, final: boolean): number | undefined {
  const more = () => (final || bytes.length >= MAX_LOOKAHEAD ? at : undefined);
  let at = bytes[0] === 0xef && bytes[1] === 0xbb && bytes[2] === 0xbf ? 3 : 0;
  for (;;) {
    while (at < bytes.length && [0x20, 0x09, 0x0a, 0x0c, 0x0d].includes(bytes[at] as number)) at++;
    if (at >= bytes.length) return more();
    if (bytes[at] !== 0x3c /* < */) return at;
    if (bytes.length - at < 9) return startsWith(bytes, at, "<!") || bytes.length - at === 1 ? more() : at;
    if (startsWith(bytes, at, "<!--")) {
      const end = indexOf(bytes, "-->", at + 4);
      if (end < 0) return more();
      at = end + 3;
      continue;
    }
    if (startsWith(bytes, at, "<!doctype")) {
      const end = bytes.indexOf(0x3e /* > */, at);
      return end < 0 ? more() : end + 1;
    }
    return at;
  }
}

/** `body` with {@link SHIM_TAG} inserted where {@link shimOffset} says. */
export function withShim(body: ReadableStream<Uint8Array>): ReadableStream<Uint8Array> {
  const tag = new TextEncoder().encode(SHIM_TAG);
  let held = new Uint8Array(0);
  let done = false;
  const insert = (offset: number, controller: TransformStreamDefaultController<Uint8Array>) => {
    done = true;
    const out = new Uint8Array(held.length + tag.length);
    out.set(held.subarray(0, offset));
    out.set(tag, offset);
    out.set(held.subarray(offset), offset + tag.length);
    held = new Uint8Array(0);
    controller.enqueue(out);
  };
  return body.pipeThrough(
    new TransformStream<Uint8Array, Uint8Array>({
      transform(chunk, controller) {
        if (done) return controller.enqueue(chunk);
        const joined = new Uint8Array(held.length + chunk.length);
        joined.set(held);
        joined.set(chunk, held.length);
        held = joined;
        const offset = shimOffset(held, false);
        if (offset !== undefined) insert(offset, controller);
      },
      flush(controller) {
        if (!done) insert(shimOffset(held, true) ?? 0, controller);
      },
    }),
  );
}

function startsWith(bytes: Uint8Array, at: number, ascii: string): boolean {
  for (let i = 0; i < ascii.length; i++) {
    const b = bytes[at + i];
    // Lower case for the comparison: `<!DOCTYPE` and `<!doctype` alike.
    if (b === undefined || (b >= 0x41 && b <= 0x5a ? b + 0x20 : b) !== ascii.charCodeAt(i)) return false;
  }
  return true;
}

function indexOf(bytes: Uint8Array, ascii: string, from: number): number {
  for (let i = from; i + ascii.length <= bytes.length; i++) if (startsWith(bytes, i, ascii)) return i;
  return -1;
}
