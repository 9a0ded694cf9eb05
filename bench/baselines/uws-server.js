'use strict';
// Baseline: uWebSockets.js, the fastest WebSocket server Node users reach for, used the way its
// users broadcast market data: pub/sub topics. One topic per channel spec (`trades.BTC-USD` for
// one channel, `trades.*` for all of a kind); each tick is serialised once (JSON.stringify) and
// handed to `app.publish` once per matching topic, at most twice. uWS batches what a loop
// iteration publishes into one write per subscriber.
//
// A socket on both `trades.*` and `trades.BTC-USD` must get each tick once, but uWS delivers a
// message published to two topics twice to a socket in both. So a socket is subscribed to the
// topics of its *effective* subscription: a wildcard topic, plus the exact topics of kinds it
// has no wildcard for. Its exact specs under a wildcard are remembered and subscribed again if
// the wildcard is unsubscribed. The publish side stays the plain `publish(ch)` +
// `publish(kind.*)`.
//
// uWS defaults throughout (idle timeout 120 s with automatic pings, no compression, 16 KiB
// maximum incoming message), except backpressure: by default uWS silently *skips* messages to
// a socket with more than 64 KiB buffered, which would be silent loss. Here the limit is
// 64 MiB and a socket over it is closed (`closeOnBackpressureLimit`), never skipped; the log
// tells (see SLOW below).
//
// Speaks tickfan's protocol subset, as ws-server.js does: `?streams=` on /ws, subscribe /
// unsubscribe ops, `kind.SYMBOL` and `kind.*` channels, error replies.

const { parseArgs, parseSpec, readTicks, handleRequest } = require('./common');

const uWS = require('@trufflesuite/uws-js-unofficial');
// The package falls back to a pure-JS implementation on top of `ws` (with a warning) when its
// native binary does not load: measuring that would be measuring ws again. Only the native
// module has `getParts`.
if (typeof uWS.getParts !== 'function') {
  process.stderr.write('uws-server: the native uWebSockets.js binary did not load; refusing the JS fallback\n');
  process.exit(1);
}

const MAX_BACKPRESSURE = 64 * 1024 * 1024;

const opts = parseArgs(process.argv.slice(2));
const decoder = new TextDecoder();

/** The topics a socket with these specs is subscribed to: see the header. */
function topicsFor(specs) {
  const topics = new Set();
  for (const spec of specs) {
    const { kind, symbol } = parseSpec(spec);
    if (symbol === '*' || !specs.has(`${kind}.*`)) topics.add(spec);
  }
  return topics;
}

/** Adds or removes `channels`; an error text if one is not a channel spec (then nothing changes). */
function subscribe(ws, channels, add) {
  const bad = channels.find((c) => !parseSpec(c));
  if (bad !== undefined) return `unknown channel ${JSON.stringify(bad)}`;
  const data = ws.getUserData();
  const before = topicsFor(data.specs);
  for (const c of channels) add ? data.specs.add(c) : data.specs.delete(c);
  const after = topicsFor(data.specs);
  for (const t of before) if (!after.has(t)) ws.unsubscribe(t);
  for (const t of after) if (!before.has(t)) ws.subscribe(t);
  return null;
}

function reply(ws, obj) {
  ws.send(JSON.stringify(obj));
}

// uWS gives no event for a close at the backpressure limit (its close code is 1006, as for a
// client that vanished) and a closed socket cannot be asked what it held. So once a second
// every socket's backpressure is sampled (a native call each, ~0.1 ms per 1,000 sockets), and
// closes of sockets that held more than SLOW bytes at the last sample are reported: the loss is
// never silent, in the log as on the client's side.
const SLOW = 1024 * 1024;
const sockets = new Set();
let slowCloses = 0;
setInterval(() => {
  let slow = 0;
  let most = 0;
  for (const ws of sockets) {
    const data = ws.getUserData();
    data.buffered = ws.getBufferedAmount();
    if (data.buffered >= SLOW) slow += 1;
    most = Math.max(most, data.buffered);
  }
  if (slow > 0 || slowCloses > 0) {
    process.stderr.write(
      `backpressure: ${slow} of ${sockets.size} sockets hold >= ${SLOW} bytes (most ${most}); ` +
        `${slowCloses} closed while holding that much since the last report ` +
        `(uWS closes a socket past ${MAX_BACKPRESSURE})\n`,
    );
    slowCloses = 0;
  }
}, 1000).unref();

const app = uWS.App();

app.ws('/ws', {
  maxBackpressure: MAX_BACKPRESSURE,
  closeOnBackpressureLimit: true,
  upgrade: (res, req, context) => {
    // The request object is only valid in this callback: read everything now.
    const streams = req.getQuery('streams') ?? '';
    res.upgrade(
      { specs: new Set(), streams, buffered: 0 },
      req.getHeader('sec-websocket-key'),
      req.getHeader('sec-websocket-protocol'),
      req.getHeader('sec-websocket-extensions'),
      context,
    );
  },
  open: (ws) => {
    sockets.add(ws);
    const { streams } = ws.getUserData();
    if (!streams) return;
    const channels = streams.split(',').filter((s) => s.length > 0);
    const error = subscribe(ws, channels, true);
    if (error) reply(ws, { op: 'error', code: 'unknown_channel', msg: error });
    else reply(ws, { op: 'subscribed', channels });
  },
  message: (ws, message, isBinary) => {
    const text = isBinary ? null : decoder.decode(message);
    reply(ws, handleRequest(text, (channels, add) => subscribe(ws, channels, add)));
  },
  close: (ws) => {
    sockets.delete(ws);
    if (ws.getUserData().buffered >= SLOW) slowCloses += 1;
  },
});

app.any('/*', (res) => {
  res.writeStatus('404 Not Found').end();
});

readTicks((obj, kind) => {
  const all = `${kind}.*`;
  const one = obj.ch;
  if (app.numSubscribers(all) === 0 && app.numSubscribers(one) === 0) return;
  const text = JSON.stringify(obj);
  // Disjoint audiences (see the header): each subscriber gets the tick once.
  app.publish(all, text);
  app.publish(one, text);
});

app.listen(opts.host, opts.port, (listenSocket) => {
  if (!listenSocket) {
    process.stderr.write(`uws-server: cannot listen on ${opts.host}:${opts.port}\n`);
    process.exit(1);
  }
  const port = uWS.us_socket_local_port(listenSocket);
  const host = opts.host.includes(':') ? `[${opts.host}]` : opts.host;
  process.stdout.write(`listening on http://${host}:${port}\n`);
});
