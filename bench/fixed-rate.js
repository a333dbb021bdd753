'use strict';
// Open-loop load at a fixed rate, for bench/run's latency run (wrk has no fixed-rate mode
// and Debian does not package wrk2). Request i is due at start + i/RATE whatever happened
// to the requests before it; it goes out on the first idle keep-alive connection, and its
// latency is counted from the time it was due (so a stall is not hidden by sending less,
// "coordinated omission") as well as from the time it was written ("service").
//
//   node bench/fixed-rate.js URL RATE SECONDS CONNECTIONS PAYLOAD_FILE [WARMUP_SECONDS]
//
// POSTs PAYLOAD_FILE with `Content-Type: application/json` and `Codeup-Event: Push Hook`
// over CONNECTIONS HTTP/1.1 connections (no pipelining): RATE x (WARMUP_SECONDS + SECONDS)
// requests in all, of which those due in the first WARMUP_SECONDS (default 1; the
// generator's own JIT warm-up) are not counted. Bounded: whatever is unanswered 10 s after
// the last request was due is counted as unfinished. Prints one JSON line.

const fs = require('fs');
const net = require('net');
const { performance } = require('perf_hooks');

const [url, rateArg, secondsArg, connectionsArg, payloadFile, warmupArg] = process.argv.slice(2);
const rate = Number(rateArg);
const seconds = Number(secondsArg);
const connections = Number(connectionsArg);
const warmup = warmupArg === undefined ? 1 : Number(warmupArg);
if (!url || !(rate > 0) || !(seconds > 0) || !(connections > 0) || !payloadFile || !(warmup >= 0)) {
  process.stderr.write('usage: fixed-rate.js URL RATE SECONDS CONNECTIONS PAYLOAD_FILE [WARMUP_SECONDS]\n');
  process.exit(2);
}
const target = new URL(url);
const payload = fs.readFileSync(payloadFile);
const head =
  `POST ${target.pathname}${target.search} HTTP/1.1\r\nHost: ${target.host}\r\n` +
  `Content-Type: application/json\r\nCodeup-Event: Push Hook\r\nContent-Length: ${payload.length}\r\n\r\n`;
const wire = Buffer.concat([Buffer.from(head, 'latin1'), payload]);

const first = Math.floor(rate * warmup); // the first request that counts
const total = first + Math.floor(rate * seconds);
const intervalMs = 1e3 / rate;
const fromDue = new Float64Array(total - first);
const service = new Float64Array(total - first);
let answered = 0; // every answer, warm-up included
let completed = 0; // answers that count
let errors = 0;
let non2xx = 0;
let scheduled = 0;
let dispatched = 0; // requests [dispatched, scheduled) are due and waiting for a connection
let startMs = 0;
let finished = false;
const idle = [];
const open = new Set();

const now = () => performance.now();

const CRLF2 = Buffer.from('\r\n\r\n');
const LENGTH_NAMES = [Buffer.from('\r\ncontent-length:'), Buffer.from('\r\nContent-Length:')];
const CHUNKED = Buffer.from('chunked');

// Length of the complete HTTP response at the start of `buf`, or -1 if more is needed.
// Only what the servers under test send: Content-Length, or chunked without trailers.
function responseLength(buf) {
  const headerEnd = buf.indexOf(CRLF2);
  if (headerEnd < 0) return -1;
  const start = headerEnd + 4;
  for (const name of LENGTH_NAMES) {
    let at = buf.indexOf(name);
    if (at < 0 || at > headerEnd) continue;
    at += name.length;
    while (buf[at] === 0x20) at += 1;
    let length = 0;
    while (buf[at] >= 0x30 && buf[at] <= 0x39) length = length * 10 + (buf[at++] - 0x30);
    return buf.length >= start + length ? start + length : -1;
  }
  const chunked = buf.indexOf(CHUNKED);
  if (chunked >= 0 && chunked < headerEnd) {
    let pos = start;
    for (;;) {
      const lineEnd = buf.indexOf('\r\n', pos);
      if (lineEnd < 0) return -1;
      const size = parseInt(buf.toString('latin1', pos, lineEnd), 16);
      pos = lineEnd + 2 + size + 2;
      if (pos > buf.length) return -1;
      if (size === 0) return pos;
    }
  }
  return start;
}

class Connection {
  constructor(socket) {
    this.socket = socket;
    this.buffer = Buffer.alloc(0);
    this.index = -1;
    this.sentMs = 0;
    socket.setNoDelay(true);
    socket.on('data', (chunk) => this.onData(chunk));
    socket.on('error', () => {});
    socket.on('close', () => {
      open.delete(this);
      const at = idle.indexOf(this);
      if (at >= 0) idle.splice(at, 1);
      if (this.index >= 0) {
        if (this.index >= first) errors += 1;
        answered += 1;
        this.index = -1;
        checkDone();
      }
    });
  }

  send(index) {
    this.index = index;
    this.sentMs = now();
    this.socket.write(wire);
  }

  onData(chunk) {
    this.buffer = this.buffer.length ? Buffer.concat([this.buffer, chunk]) : chunk;
    const length = responseLength(this.buffer);
    if (length < 0 || this.index < 0) return;
    const status = (this.buffer[9] - 0x30) * 100 + (this.buffer[10] - 0x30) * 10 + (this.buffer[11] - 0x30);
    this.buffer = this.buffer.subarray(length);
    const done = now();
    answered += 1;
    if (this.index >= first) {
      fromDue[completed] = done - (startMs + this.index * intervalMs);
      service[completed] = done - this.sentMs;
      completed += 1;
      if (status < 200 || status > 299) non2xx += 1;
    }
    this.index = -1;
    idle.push(this);
    dispatch();
    checkDone();
  }
}

function dispatch() {
  while (dispatched < scheduled && idle.length > 0) {
    idle.pop().send(dispatched);
    dispatched += 1;
  }
}

function tick() {
  if (finished) return;
  const elapsed = now() - startMs;
  while (scheduled < total && scheduled * intervalMs <= elapsed) scheduled += 1;
  dispatch();
  if (scheduled < total) setTimeout(tick, 1);
}

function checkDone() {
  if (!finished && answered >= total) finish();
}

function percentiles(values, count) {
  const sorted = values.subarray(0, count).sort();
  const at = (p) => (count ? sorted[Math.min(count - 1, Math.max(0, Math.ceil((p / 100) * count) - 1))] : null);
  const round = (x) => (x === null ? null : Math.round(x * 1000) / 1000);
  return { p50: round(at(50)), p90: round(at(90)), p99: round(at(99)), p99_9: round(at(99.9)), max: round(at(100)) };
}

function finish() {
  finished = true;
  const measuredS = (now() - startMs) / 1e3 - warmup;
  const result = {
    target_rate: rate,
    seconds,
    warmup_seconds: warmup,
    connections,
    requests: total - first,
    completed,
    errors,
    non_2xx: non2xx,
    unfinished: total - first - completed - errors,
    achieved_rate: Math.round((completed / Math.max(measuredS, seconds)) * 10) / 10,
    latency_ms: percentiles(fromDue, completed),
    service_ms: percentiles(service, completed),
  };
  process.stdout.write(JSON.stringify(result) + '\n');
  for (const connection of open) connection.socket.destroy();
  process.exit(0);
}

let connected = 0;
for (let i = 0; i < connections; i += 1) {
  const socket = net.connect({ host: target.hostname, port: Number(target.port) || 80 });
  const connection = new Connection(socket);
  open.add(connection);
  socket.on('connect', () => {
    idle.push(connection);
    connected += 1;
    if (connected === connections) {
      startMs = now();
      setTimeout(finish, (warmup + seconds + 10) * 1000);
      tick();
    }
  });
}
// Bounded even if some connection never opens.
setTimeout(() => {
  if (connected < connections) {
    process.stderr.write(`fixed-rate: only ${connected} of ${connections} connections opened\n`);
    process.exit(1);
  }
}, 5000).unref();
