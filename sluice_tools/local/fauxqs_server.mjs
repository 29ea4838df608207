// Serve SQS from fauxqs on 127.0.0.1 only.
// fauxqs's own start (startFauxqs / the `fauxqs` command) listens on 0.0.0.0 with no option
// to change it, so this builds its app and listens on loopback ourselves.
// Usage: node fauxqs_server.mjs <port>   (0 = any free port)
// Prints one JSON line {"port": N} on stdout once listening; exits on SIGTERM/SIGINT or when
// stdin closes (the parent died), so a crashed stack never leaves this server behind.
import { buildApp } from "fauxqs";

const requested = Number.parseInt(process.argv[2] ?? "0", 10);
if (!Number.isInteger(requested) || requested < 0 || requested > 65535) {
  console.error(`fauxqs_server: bad port ${process.argv[2]}`);
  process.exit(2);
}

const app = buildApp({ logger: false });
let closing = false;
async function shutdown(code) {
  if (closing) return;
  closing = true;
  try {
    await app.close();
  } finally {
    process.exit(code);
  }
}

try {
  const address = await app.listen({ port: requested, host: "127.0.0.1" });
  const port = Number.parseInt(new URL(address).port, 10);
  process.stdout.write(JSON.stringify({ port }) + "\n");
} catch (err) {
  // EADDRINUSE and friends: say which port, the parent turns it into a user-facing message.
  console.error(`fauxqs_server: cannot listen on 127.0.0.1:${requested}: ${err.code ?? err.message}`);
  process.exit(3);
}

process.on("SIGTERM", () => shutdown(0));
process.on("SIGINT", () => shutdown(0));
process.stdin.on("end", () => shutdown(0));
process.stdin.on("error", () => shutdown(0));
process.stdin.resume();
