'use strict';
// The benchmark's HTTP app under Node's cluster module: the same bytes and
// rules as benchmarks/app.py (see its docstring), on `net` rather than
// `http` so that both sides run the same tiny parser and only the process
// model differs.
//
//   NODE_CLUSTER_SCHED_POLICY=rr|none BENCH_PORT=8000 BENCH_WORKERS=2 \
//   BENCH_STATS_DIR=/tmp/stats node benchmarks/node_cluster.js
//
// Each worker replaces STATS_DIR/<pid>.json every 50 ms with
// {"pid", "conns", "reqs", "t"}, like the Python app.

const cluster = require('node:cluster');
const fs = require('node:fs');
const net = require('node:net');
const path = require('node:path');

function env(name) {
  const value = process.env[name];
  if (!value) {
    console.error(`node_cluster.js: ${name} must be set`);
    process.exit(2);
  }
  return value;
}

const port = Number(env('BENCH_PORT'));
const workers = Number(env('BENCH_WORKERS'));
const statsDir = env('BENCH_STATS_DIR');

if (cluster.isPrimary) {
  const policy = cluster.schedulingPolicy === cluster.SCHED_RR ? 'rr' : 'none';
  console.log(JSON.stringify({ primary: process.pid, policy, node: process.version }));
  for (let i = 0; i < workers; i++) cluster.fork();
  // The driver holds our stdin open; when it dies, so do we (the workers
  // follow when their IPC channel closes).  Python's side uses PDEATHSIG.
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('error', () => process.exit(0));
  process.stdin.resume();
  cluster.on('exit', (worker, code, signal) => {
    // A benchmark with a dead worker measures nothing: stop loudly.
    console.error(`worker ${worker.process.pid} exited (code ${code}, signal ${signal})`);
    process.exit(1);
  });
} else {
  const BODY = 'Hello, world!';
  const HEAD = `HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: ${BODY.length}\r\n`;
  const KEEP = Buffer.from(`${HEAD}\r\n${BODY}`, 'latin1');
  const CLOSE = Buffer.from(`${HEAD}Connection: close\r\n\r\n${BODY}`, 'latin1');
  let conns = 0;
  let reqs = 0;
  const file = path.join(statsDir, `${process.pid}.json`);
  const tmp = path.join(statsDir, `.${process.pid}.tmp`);

  function writeStats() {
    fs.writeFileSync(tmp, JSON.stringify({ pid: process.pid, conns, reqs, t: Date.now() / 1000 }));
    fs.renameSync(tmp, file);   // readers never see a half-written file
  }

  function stall(head) {
    // "GET /stall?s=2 HTTP/1.1" -> block this process's event loop for 2 s
    // without burning CPU, like time.sleep() in the Python app.
    const match = /s=([0-9.]+)/.exec(head.split(' ', 2)[1] || '');
    const seconds = Math.min(Math.max(match ? Number(match[1]) : 2, 0), 30);
    Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, seconds * 1000);
  }

  const server = net.createServer((sock) => {
    conns++;
    let buf = '';
    sock.on('data', (chunk) => {
      buf += chunk.toString('latin1');
      let end;
      while ((end = buf.indexOf('\r\n\r\n')) >= 0) {
        const head = buf.slice(0, end);
        buf = buf.slice(end + 4);
        reqs++;
        if (head.startsWith('GET /stall')) stall(head);
        if (head.toLowerCase().includes('connection: close')) {
          sock.end(CLOSE);
          buf = '';
          return;
        }
        sock.write(KEEP);
      }
    });
    sock.on('error', () => {});   // a client reset is not the server's problem
  });
  server.listen({ port, host: '127.0.0.1', backlog: 2048 }, () => {
    writeStats();
    setInterval(writeStats, 50);
  });
}
