// The service a real host forwards to in the real-relay tests.

import { randomBytes } from "node:crypto";
import net from "node:net";

/**
 * The service the host forwards to: reads the request to its end (the player's end
 * of stream, passed on by the host as a half-close), then answers with as many random
 * bytes as the request's first four ask for, and closes. `done` resolves with what it
 * got and what it sent, for the first request.
 */
export function startService(processes) {
  const sockets = new Set();
  let finished;
  const done = new Promise((resolve) => (finished = resolve));
  const server = net.createServer({ allowHalfOpen: true }, (socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => {});
    const chunks = [];
    socket.on("data", (chunk) => chunks.push(chunk));
    socket.on("end", () => {
      const request = new Uint8Array(Buffer.concat(chunks));
      if (request.length < 4) {
        // The host's look at the service when it starts: it connects and leaves.
        socket.end();
        return;
      }
      const response = new Uint8Array(randomBytes(new DataView(request.buffer).getUint32(0)));
      socket.end(response);
      finished({ request, response });
    });
  });
  // Processes.closeAll ends what it tracks this way.
  server.closeAllConnections = () => {
    for (const socket of sockets) socket.destroy();
  };
  processes.track(server);
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve({ addr: `127.0.0.1:${server.address().port}`, done }));
  });
}
