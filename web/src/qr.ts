/**
 * A QR code of short text, drawn as one SVG path: how the player page shows its
 * player key so that the host's owner can scan it from a phone's screen.
 *
 * The encoding is `@paulmillr/qr` (no dependencies, bundled into player.js at build
 * time, so nothing is fetched when the page runs). The page builds the SVG with DOM
 * calls, not markup or a `data:` image, which its Content-Security-Policy of
 * `'self'` would refuse.
 */

import { encodeQR } from "@paulmillr/qr";

/** Light modules around the code, as ISO/IEC 18004 asks: scanners look for it. */
export const QUIET_ZONE = 4;

/** A QR code ready to draw: `size` modules a side (quiet zone included) and the dark ones as a path. */
export interface QrDrawing {
  readonly size: number;
  /** SVG path data in module units: one rectangle per run of dark modules in a row. */
  readonly path: string;
}

/** The modules of `text`'s QR code, `true` for dark, without a quiet zone; error correction M (15%). */
export function qrModules(text: string): boolean[][] {
  // Byte mode: a key in lower case is not QR's alphanumeric set (upper case only).
  return encodeQR(text, "raw", { ecc: "medium", encoding: "byte", border: 0 });
}

/** `text` as a QR code to draw, with the quiet zone around it. */
export function qrDrawing(text: string): QrDrawing {
  const modules = qrModules(text);
  const parts: string[] = [];
  modules.forEach((row, y) => {
    let x = 0;
    while (x < row.length) {
      if (!row[x]) {
        x++;
        continue;
      }
      // A run of dark modules is one rectangle: a shorter path, and no hairline
      // seams between neighbours when the browser scales it.
      let end = x;
      while (end < row.length && row[end]) end++;
      parts.push(`M${x + QUIET_ZONE} ${y + QUIET_ZONE}h${end - x}v1h-${end - x}z`);
      x = end;
    }
  });
  return { size: modules.length + 2 * QUIET_ZONE, path: parts.join("") };
}
