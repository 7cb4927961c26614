// The host owner's panel. Every API call carries the access token the host printed
// in the link after `#token=` (the part of a URL a browser never sends to a server).
// Everything shown is set with textContent: player notes and states are never
// parsed as HTML.

const token = new URLSearchParams(location.hash.slice(1)).get("token") ?? "";
const $ = (id) => document.getElementById(id);

async function api(method, path, body) {
  const headers = { Authorization: `Bearer ${token}` };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store",
  });
  if (!response.ok) {
    let message = `${response.status} ${response.statusText}`;
    try {
      message = (await response.json()).error ?? message;
    } catch {
      // not JSON: keep the status line
    }
    throw new Error(message);
  }
  return response;
}

function showError(err) {
  const box = $("error");
  if (err) {
    box.textContent = err.message ?? String(err);
    box.hidden = false;
  } else {
    box.hidden = true;
  }
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i += 1;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

function duration(s) {
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h} h ${m} min` : m > 0 ? `${m} min ${s % 60} s` : `${s} s`;
}

function renderStatus(status) {
  const sw = $("relay-switch");
  sw.checked = status.relay_enabled;
  sw.disabled = status.relay === null;
  const line = $("status");
  line.textContent = status.status;
  line.className = `status ${
    status.state === "registered" ? "ok" : status.state === "disabled" ? "off" : "bad"
  }`;
  $("direct").textContent = status.direct_status ?? "no direct listener";
  $("ticket").textContent = status.ticket;
  if (status.web && $("web-link").textContent !== status.web) {
    $("web-link").textContent = status.web;
    $("web-link").href = status.web;
    $("web-share").hidden = false;
    loadWebQr();
  }

  const body = $("sessions").tBodies[0];
  body.replaceChildren(
    ...status.sessions.map((s) => {
      const row = document.createElement("tr");
      for (const cell of [
        s.id,
        s.path,
        s.player,
        duration(s.seconds),
        bytes(s.bytes_to_player),
        bytes(s.bytes_from_player),
        s.resumes,
      ]) {
        const td = document.createElement("td");
        td.textContent = String(cell);
        row.append(td);
      }
      return row;
    }),
  );
  $("no-sessions").hidden = status.sessions.length > 0;
}

function renderPlayers(list) {
  const form = $("add-player");
  const mode = $("players-mode");
  const items = $("players");
  if (list.mode === "open") {
    mode.textContent =
      "This host serves every player with the ticket. Start it with --authorized-players FILE to keep a list.";
    form.hidden = true;
    items.replaceChildren();
    return;
  }
  form.hidden = false;
  mode.textContent =
    list.players.length === 0 ? "No player is listed: every player is refused." : "";
  items.replaceChildren(
    ...list.players.map((p) => {
      const li = document.createElement("li");
      const key = document.createElement("code");
      key.textContent = p.key;
      const note = document.createElement("span");
      note.textContent = p.note;
      const remove = document.createElement("button");
      remove.type = "button";
      remove.textContent = "Remove";
      remove.addEventListener("click", async () => {
        try {
          const response = await api("DELETE", "/api/players", { key: p.key });
          renderPlayers(await response.json());
          showError(null);
        } catch (err) {
          showError(err);
        }
      });
      li.append(key, note, remove);
      return li;
    }),
  );
}

async function refresh() {
  try {
    renderStatus(await (await api("GET", "/api/status")).json());
    showError(null);
  } catch (err) {
    showError(err);
  }
}

async function loadPlayers() {
  try {
    renderPlayers(await (await api("GET", "/api/players")).json());
  } catch (err) {
    showError(err);
  }
}

async function loadWebQr() {
  try {
    const svg = await (await api("GET", "/api/web.svg")).blob();
    $("web-qr").src = URL.createObjectURL(svg);
  } catch (err) {
    showError(err);
  }
}

async function loadQr() {
  try {
    const svg = await (await api("GET", "/api/ticket.svg")).blob();
    $("qr").src = URL.createObjectURL(svg);
  } catch (err) {
    showError(err);
  }
}

$("relay-switch").addEventListener("change", async (event) => {
  const sw = event.target;
  sw.disabled = true;
  try {
    renderStatus(await (await api("POST", "/api/relay", { enabled: sw.checked })).json());
    showError(null);
  } catch (err) {
    showError(err);
    await refresh();
  } finally {
    sw.disabled = false;
  }
});

$("copy").addEventListener("click", async () => {
  const text = $("ticket").textContent;
  try {
    await navigator.clipboard.writeText(text);
    $("copy").textContent = "Copied";
  } catch {
    // No clipboard access: select the ticket so the owner can copy it by hand.
    getSelection().selectAllChildren($("ticket"));
  }
});

$("add-player").addEventListener("submit", async (event) => {
  event.preventDefault();
  try {
    const response = await api("POST", "/api/players", {
      key: $("player-key").value,
      note: $("player-note").value,
    });
    renderPlayers(await response.json());
    $("player-key").value = "";
    $("player-note").value = "";
    $("scan-status").textContent = "";
    showError(null);
  } catch (err) {
    showError(err);
  }
});

// Paste: the key a player copied or shared, from the clipboard into the form.
$("paste").addEventListener("click", async () => {
  try {
    $("player-key").value = (await navigator.clipboard.readText()).trim();
    $("scan-status").textContent = "";
    $("player-note").focus();
  } catch {
    // No clipboard access for the page: the field takes a paste all the same.
    $("scan-status").textContent = "This browser lets the page read no clipboard: paste into the key field.";
    $("player-key").focus();
  }
});

// Scan: the QR code of the key on the player's screen, held up to this computer's
// camera. The browser only grabs frames; the host reads the code (POST /api/scan,
// grey pixels, nothing kept), so every browser with a camera can scan.
const SCAN_EVERY_MS = 400;
const SCAN_FOR_MS = 60_000;
const SCAN_WIDTH = 640;
let scanning;

if (navigator.mediaDevices?.getUserMedia) $("scan").hidden = false;

$("scan").addEventListener("click", () => (scanning ? stopScan("") : startScan()));

async function startScan() {
  const video = $("scan-video");
  let stream;
  try {
    stream = await navigator.mediaDevices.getUserMedia({ video: { facingMode: "environment" }, audio: false });
  } catch (err) {
    $("scan-status").textContent = `No camera for the page: ${err.message ?? err}. Paste the key instead.`;
    return;
  }
  scanning = { stream, until: Date.now() + SCAN_FOR_MS, timer: undefined };
  video.srcObject = stream;
  video.hidden = false;
  $("scan").textContent = "Stop scanning";
  $("scan-status").textContent = "Hold the player's QR code up to the camera…";
  await video.play().catch(() => {});
  scanFrame();
}

function stopScan(words) {
  if (!scanning) return;
  clearTimeout(scanning.timer);
  for (const track of scanning.stream.getTracks()) track.stop();
  scanning = undefined;
  const video = $("scan-video");
  video.srcObject = null;
  video.hidden = true;
  $("scan").textContent = "Scan";
  $("scan-status").textContent = words;
}

async function scanFrame() {
  const current = scanning;
  if (!current) return;
  if (Date.now() > current.until) {
    stopScan("No key seen in a minute: scan again, or paste the key.");
    return;
  }
  const video = $("scan-video");
  if (video.videoWidth > 0) {
    const width = Math.min(SCAN_WIDTH, video.videoWidth);
    const height = Math.round((video.videoHeight * width) / video.videoWidth);
    const canvas = document.createElement("canvas");
    canvas.width = width;
    canvas.height = height;
    const context = canvas.getContext("2d", { willReadFrequently: true });
    context.drawImage(video, 0, 0, width, height);
    const rgba = context.getImageData(0, 0, width, height).data;
    const grey = new Uint8Array(width * height);
    for (let i = 0; i < grey.length; i++) {
      grey[i] = (rgba[i * 4] * 299 + rgba[i * 4 + 1] * 587 + rgba[i * 4 + 2] * 114) / 1000;
    }
    try {
      const response = await fetch(`/api/scan?width=${width}&height=${height}`, {
        method: "POST",
        headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/octet-stream" },
        body: grey,
        cache: "no-store",
      });
      if (response.ok) {
        const { key } = await response.json();
        $("player-key").value = key;
        stopScan("Key read from the camera: add a note, then Add player.");
        $("player-note").focus();
        return;
      }
      if (response.status !== 422) {
        const body = await response.json().catch(() => ({}));
        stopScan(`The host could not read the frame: ${body.error ?? response.status}`);
        return;
      }
    } catch (err) {
      stopScan(`The host could not read the frame: ${err.message ?? err}`);
      return;
    }
  }
  if (scanning === current) current.timer = setTimeout(scanFrame, SCAN_EVERY_MS);
}

if (!token) {
  showError(new Error("No access token in the link: open the panel link the host printed (…/#token=…)."));
} else {
  refresh();
  loadPlayers();
  loadQr();
  setInterval(refresh, 2000);
}
