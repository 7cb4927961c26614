// The player page's hand-over to its service worker (src/page.ts): a browser that
// never starts it, or refuses it, leaves the page saying what to do, not "Starting
// the player…" for ever.
import assert from "node:assert/strict";
import { test } from "node:test";

import { serviceWorkerRefusedWords, serviceWorkerScript, startServiceWorker } from "../build/page.js";

/** A stand-in for `navigator.serviceWorker`: `register` does what `behaviour` says. */
function container(behaviour) {
  const listeners = [];
  const self = {
    controller: null,
    ready: new Promise(() => {}),
    addEventListener: (_type, listener) => listeners.push(listener),
    registered: [],
    register: async (script) => {
      self.registered.push(script);
      if (behaviour === "refuse") {
        throw Object.assign(new Error("An SSL certificate error occurred when fetching the script."), { name: "SecurityError" });
      }
      if (behaviour === "start") {
        const active = { postMessage: () => {} };
        self.ready = Promise.resolve({ active });
        setTimeout(() => {
          self.controller = active;
          for (const listener of listeners) listener();
        }, 5);
        return { active };
      }
      return { active: null };
    },
  };
  return self;
}

test("a service worker the browser starts hands over", async () => {
  assert.equal(await startServiceWorker(container("start"), 2000), "started");
});

test("one the browser never starts, or refuses, is said with what to do", async () => {
  const silent = await startServiceWorker(container("hang"), 50);
  assert.equal(silent, "timeout");
  const refused = await startServiceWorker(container("refuse"), 2000);
  assert.ok(refused instanceof Error && refused.message.includes("SSL certificate"), String(refused));
  for (const outcome of [silent, refused]) {
    const words = serviceWorkerRefusedWords(outcome);
    assert.match(words, /--ignore-certificate-errors-spki-list/);
    assert.match(words, /certificate from a CA/);
  }
});

test("in a pool the worker's script names the members, so a new list installs a worker with the relay's policy of now", async () => {
  assert.equal(serviceWorkerScript([]), "/.blindrelay/sw.js", "a relay on its own: the same script as ever");
  const before = serviceWorkerScript(["127.0.0.1:4434", "relay-1.example:443"]);
  assert.equal(before, "/.blindrelay/sw.js?pool=127.0.0.1%3A4434%2Crelay-1.example%3A443");
  assert.notEqual(serviceWorkerScript(["127.0.0.1:4434", "relay-3.example:443"]), before);
  const c = container("start");
  assert.equal(await startServiceWorker(c, 2000, before), "started");
  assert.deepEqual(c.registered, [before]);
});

test("with a worker in control and a new one installing, the page hands over once the new one is active", async () => {
  const listeners = [];
  const incoming = {
    state: "installing",
    addEventListener: (_type, listener) => listeners.push(listener),
  };
  const old = { postMessage: () => {} };
  const c = {
    controller: old,
    ready: Promise.resolve({ active: old }),
    addEventListener: () => {},
    register: async () => ({ installing: incoming, waiting: null, active: old }),
  };
  let done = false;
  const starting = startServiceWorker(c, 2000, "/.blindrelay/sw.js?pool=x").then((outcome) => {
    done = true;
    return outcome;
  });
  await new Promise((resolve) => setTimeout(resolve, 20));
  assert.equal(done, false, "not while the new worker installs");
  incoming.state = "activated";
  for (const listener of listeners) listener();
  assert.equal(await starting, "started");
});
