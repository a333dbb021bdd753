'use strict';
// The relay users write by hand, as the reference for bench/run: Node's plain `http`
// module, no npm packages. It does what the benchmark's `respond: sync` hookrelay route
// does: parse the JSON body, check the Codeup event header, the event and the `ref`,
// build a DingTalk markdown message, forward it over a keep-alive connection to the
// sink and answer with the sink's answer.
//
//   PORT=8081 SINK_URL='http://127.0.0.1:8082/robot/send?access_token=x' node bench/node-relay.js

const http = require('http');

const port = Number(process.env.PORT);
const sink = new URL(process.env.SINK_URL);
const agent = new http.Agent({ keepAlive: true, maxSockets: 64 });

function reply(res, status, value) {
  const text = JSON.stringify(value);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) });
  res.end(text);
}

function handle(req, res, raw) {
  if (req.method !== 'POST' || req.url.split('?')[0] !== '/hooks/sync') {
    return reply(res, 404, { error: 'no route matched' });
  }
  let body;
  try {
    body = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    return reply(res, 400, { error: 'invalid JSON' });
  }
  const matches =
    req.headers['codeup-event'] === 'Push Hook' &&
    body !== null &&
    body.object_kind === 'push' &&
    typeof body.ref === 'string' &&
    /^refs\/heads\//.test(body.ref);
  if (!matches) {
    return reply(res, 404, { error: 'no route matched' });
  }
  const commits = Array.isArray(body.commits) ? body.commits.length : 0;
  const message = JSON.stringify({
    msgtype: 'markdown',
    markdown: {
      title: `push ${body.repository && body.repository.name}`,
      text: `### ${body.user_name} pushed ${commits} commit(s) to ${body.ref}`,
    },
  });
  const out = http.request(
    {
      agent,
      host: sink.hostname,
      port: sink.port,
      method: 'POST',
      path: sink.pathname + sink.search,
      headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(message) },
    },
    (answer) => {
      const chunks = [];
      answer.on('data', (chunk) => chunks.push(chunk));
      answer.on('end', () => {
        const text = Buffer.concat(chunks);
        res.writeHead(answer.statusCode, {
          'content-type': answer.headers['content-type'] || 'application/octet-stream',
          'content-length': text.length,
        });
        res.end(text);
      });
    },
  );
  out.on('error', (err) => reply(res, 502, { error: 'target unavailable', detail: String(err) }));
  out.end(message);
}

const server = http.createServer((req, res) => {
  const chunks = [];
  req.on('data', (chunk) => chunks.push(chunk));
  req.on('end', () => handle(req, res, Buffer.concat(chunks)));
});
server.keepAliveTimeout = 60000;
server.listen(port, '127.0.0.1');
process.on('SIGTERM', () => process.exit(0));
