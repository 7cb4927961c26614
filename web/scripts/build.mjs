// Bundles the player into dist/player.js and prints its SHA-256.
//
// The build is meant to be reproducible, so that anyone can rebuild the page's code
// from this repository and compare it with the hash the operator publishes: no
// timestamps, no absolute paths, no source maps, a pinned target, and the exact
// dependency versions of package-lock.json (install with `npm ci`).
//
//   node scripts/build.mjs            build, print "sha256  dist/player.js"
//   node scripts/build.mjs --check    build twice from scratch, fail if the hashes differ
import { createHash } from "node:crypto";
import { mkdir, readFile, rm } from "node:fs/promises";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
const outfile = join(root, "dist", "player.js");

async function bundle() {
  await rm(join(root, "dist"), { recursive: true, force: true });
  await mkdir(join(root, "dist"));
  await build({
    absWorkingDir: root,
    entryPoints: ["src/index.ts"],
    outfile,
    bundle: true,
    format: "esm",
    platform: "browser",
    target: ["es2022"],
    minify: true,
    sourcemap: false,
    legalComments: "eof",
    charset: "utf8",
    logLevel: "warning",
  });
  return createHash("sha256").update(await readFile(outfile)).digest("hex");
}

const first = await bundle();
if (process.argv.includes("--check")) {
  const second = await bundle();
  if (first !== second) {
    console.error(`not reproducible: ${first} then ${second}`);
    process.exit(1);
  }
  console.log(`reproducible: two builds give ${first}`);
}
console.log(`${first}  dist/player.js`);
