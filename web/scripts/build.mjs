// Builds the browser player into dist/: index.html (the page), player.css (its
// stylesheet), player.js (its script), sw.js (the service worker) and ws.js (the
// script the worker puts in the host's pages for their WebSockets), and prints
// their SHA-256.
//
// The build is meant to be reproducible, so that anyone can rebuild the page's code
// from this repository and compare it with the hash the operator publishes: no
// timestamps, no absolute paths, no source maps, a pinned target, and the exact
// dependency versions of package-lock.json (install with `npm ci`). dist/ is
// committed because the relay embeds these five files in its binary.
//
//   node scripts/build.mjs            build into dist/, print "sha256  dist/<file>"
//   node scripts/build.mjs --check    build twice in temporary folders; fail if the two
//                                     differ from each other or from the committed dist/
import { createHash } from "node:crypto";
import { copyFile, mkdir, mkdtemp, readFile, readdir, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const dist = join(root, "dist");
/** Exactly what dist/ holds, in the order printed. */
const FILES = ["index.html", "player.css", "player.js", "sw.js", "ws.js"];

const common = {
  absWorkingDir: root,
  bundle: true,
  platform: "browser",
  target: ["es2022"],
  minify: true,
  sourcemap: false,
  legalComments: "eof",
  charset: "utf8",
  logLevel: "warning",
};

async function bundle(out) {
  await rm(out, { recursive: true, force: true });
  await mkdir(out, { recursive: true });
  // The page's script is a module (`<script type="module">`); the worker is a
  // classic script, which every browser with service workers can start.
  await build({ ...common, entryPoints: ["src/page.ts"], outfile: join(out, "player.js"), format: "esm" });
  await build({ ...common, entryPoints: ["src/sw.ts"], outfile: join(out, "sw.js"), format: "iife" });
  // A classic script too: the host's page loads it before its own, without `type="module"`.
  await build({ ...common, entryPoints: ["src/ws.ts"], outfile: join(out, "ws.js"), format: "iife" });
  await copyFile(join(root, "static", "index.html"), join(out, "index.html"));
  await copyFile(join(root, "static", "player.css"), join(out, "player.css"));
  return hashes(out);
}

async function hashes(dir) {
  const present = (await readdir(dir).catch(() => [])).sort();
  if (JSON.stringify(present) !== JSON.stringify([...FILES].sort())) {
    return { error: `${dir} holds ${present.join(", ") || "nothing"}, not ${FILES.join(", ")}` };
  }
  const out = {};
  for (const file of FILES) out[file] = createHash("sha256").update(await readFile(join(dir, file))).digest("hex");
  return out;
}

const print = (h) => FILES.map((file) => `${h[file]}  dist/${file}`).join("\n");

if (process.argv.includes("--check")) {
  const scratch = await mkdtemp(join(tmpdir(), "blindrelay-web-build-"));
  try {
    const first = await bundle(join(scratch, "a"));
    const second = await bundle(join(scratch, "b"));
    if (JSON.stringify(first) !== JSON.stringify(second)) {
      console.error(`not reproducible: two builds differ\n${print(first)}\nthen\n${print(second)}`);
      process.exit(1);
    }
    console.log(`reproducible: two builds give the same files`);
    const committed = await hashes(dist);
    if (committed.error !== undefined || JSON.stringify(committed) !== JSON.stringify(first)) {
      console.error(
        `dist/ is not what the sources build: run \`npm run build\` and commit dist/\n` +
          (committed.error ?? `committed:\n${print(committed)}`) +
          `\nbuilt:\n${print(first)}`,
      );
      process.exit(1);
    }
    console.log("dist/ matches the sources");
    console.log(print(first));
  } finally {
    await rm(scratch, { recursive: true, force: true });
  }
} else {
  console.log(print(await bundle(dist)));
}
