// bench/cluster/app.js: the Node HTTP app of bench/cluster, the same file for every
// run (one process direct, PM2 cluster mode, fleet socket and proxy modes).
//
// Listens on the socket fleet passes at fd 3 (systemd socket activation: LISTEN_FDS,
// LISTEN_PID) when there is one, else on PORT (PM2 cluster mode, fleet proxy mode,
// direct). Answers every request with "ok".
//
// Stops the way a reload needs, on SIGINT (PM2's and fleet's default kill signal) or
// SIGTERM: close the listener at once (queued connections go to the other instances),
// answer the request in flight on each keep-alive connection with `Connection: close`,
// then exit once every connection has ended. Idle keep-alive connections are closed
// only after a grace period: closing one at the instant its client sends a request
// makes that request fail, which is the app's fault, not the process manager's.
// (Node's own `server.close()` closes idle connections at once since Node 19, so the
// listener is closed with `net.Server.prototype.close` instead.)
//
// BENCH_APP_STOP=close stops with plain `server.close()` instead, as most Node apps
// do; run.sh reloads that variant too, to show where failed requests come from.
'use strict';
const http = require('http');
const net = require('net');

const IDLE_GRACE_MS = 1000; // then close connections still idle (well under PM2's 1600 ms kill_timeout)

let stopping = false;
let draining = false; // the graceful stop: every response from now on closes its connection
const server = http.createServer((req, res) => {
  if (draining) res.setHeader('Connection', 'close');
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': 2 });
  res.end('ok');
});

const inherited = Number(process.env.LISTEN_FDS) >= 1 &&
  (!process.env.LISTEN_PID || Number(process.env.LISTEN_PID) === process.pid);
if (inherited) {
  server.listen({ fd: 3 }, () => console.log(`listening on fd 3 (inherited), pid ${process.pid}`));
} else if (process.env.PORT) {
  server.listen(Number(process.env.PORT), () => console.log(`listening on port ${process.env.PORT}, pid ${process.pid}`));
} else {
  console.error('app.js: set PORT (or pass a socket at fd 3 with LISTEN_FDS=1)');
  process.exit(2);
}

function stop(signal) {
  if (stopping) return;
  stopping = true;
  console.log(`${signal}: draining, pid ${process.pid}`);
  if (process.env.BENCH_APP_STOP === 'close') {
    // Node's plain way: also closes idle keep-alive connections at once.
    server.close(() => process.exit(0));
    return;
  }
  draining = true;
  net.Server.prototype.close.call(server, () => process.exit(0));
  setTimeout(() => server.closeIdleConnections(), IDLE_GRACE_MS).unref();
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
