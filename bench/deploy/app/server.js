// bench/deploy/app/server.js: the app bench/deploy/run.sh deploys, with fleet and with
// PM2, from the same git repository (run.sh copies this file into it).
//
// A tiny HTTP server: every answer is the text of version.txt, read once at start from
// the directory of this file (the release being served; run.sh writes a new version
// and commits it before each deploy, so an answer tells which release is live). It
// listens on the socket fleet passes at fd 3 (LISTEN_FDS, exec_mode = "cluster") when
// there is one, else on PORT (PM2, fleet's proxy mode) on every address, so the bench
// can ask each test-bed host from outside. Stops on SIGINT (fleet's and PM2's kill
// signal) or SIGTERM: stops accepting and exits once the requests in flight are done,
// within a second.
'use strict';
const fs = require('fs');
const http = require('http');
const path = require('path');

const version = fs.readFileSync(path.join(__dirname, 'version.txt'), 'utf8').trim();
const body = `${version}\n`;

const server = http.createServer((req, res) => {
  res.writeHead(200, { 'Content-Type': 'text/plain', 'Content-Length': Buffer.byteLength(body) });
  res.end(body);
});

const inherited = Number(process.env.LISTEN_FDS) >= 1 &&
  (!process.env.LISTEN_PID || Number(process.env.LISTEN_PID) === process.pid);
if (inherited) {
  server.listen({ fd: 3 }, () => console.log(`${version}: listening on fd 3, pid ${process.pid}`));
} else if (process.env.PORT) {
  server.listen(Number(process.env.PORT), '0.0.0.0',
    () => console.log(`${version}: listening on port ${process.env.PORT}, pid ${process.pid}`));
} else {
  console.error('server.js: set PORT (or pass a socket at fd 3 with LISTEN_FDS=1)');
  process.exit(2);
}

function stop(signal) {
  console.log(`${version}: ${signal}, stopping`);
  server.close(() => process.exit(0));
  setTimeout(() => process.exit(0), 1000).unref();
}
process.on('SIGINT', () => stop('SIGINT'));
process.on('SIGTERM', () => stop('SIGTERM'));
