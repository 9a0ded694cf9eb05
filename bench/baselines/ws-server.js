'use strict';
// Baseline: the Node `ws` server a typical developer writes for a market-data feed. Each tick
// from stdin is serialised once (JSON.stringify) and sent to every subscribed socket with
// ws.send, ignoring bufferedAmount as most code does: a slow client makes the process buffer
// without bound instead of dropping. Speaks tickfan's protocol subset: `?streams=` on /ws,
// subscribe / unsubscribe ops, `kind.SYMBOL` and `kind.*` channels.

const http = require('node:http');
const { WebSocket, WebSocketServer } = require('ws');
const { parseArgs, parseSpec, readTicks, listen, handleRequest } = require('./common');

const opts = parseArgs(process.argv.slice(2));
const exact = new Map(); // channel -> Set of sockets
const wildcard = new Map(); // kind -> Set of sockets

function setOf(map, key) {
  let set = map.get(key);
  if (!set) map.set(key, (set = new Set()));
  return set;
}

function subscribe(ws, channels, add) {
  const bad = channels.filter((c) => !parseSpec(c));
  if (bad.length > 0) return `unknown channel ${JSON.stringify(bad[0])}`;
  for (const c of channels) {
    const { kind, symbol } = parseSpec(c);
    const set = symbol === '*' ? setOf(wildcard, kind) : setOf(exact, c);
    if (add) {
      set.add(ws);
      ws.specs.add(c);
    } else {
      set.delete(ws);
      ws.specs.delete(c);
    }
  }
  return null;
}

function reply(ws, obj) {
  ws.send(JSON.stringify(obj));
}

const server = http.createServer((req, res) => {
  res.writeHead(404).end();
});
const wss = new WebSocketServer({ noServer: true });

server.on('upgrade', (req, socket, head) => {
  const url = new URL(req.url, 'http://localhost');
  if (url.pathname !== '/ws') {
    socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
    return;
  }
  wss.handleUpgrade(req, socket, head, (ws) => {
    ws.specs = new Set();
    // As in ws's own examples: without a listener, one malformed frame from any client is an
    // uncaught 'error' that takes the whole process down.
    ws.on('error', (e) => process.stderr.write(`client error: ${e.message}\n`));
    const streams = url.searchParams.get('streams');
    if (streams) {
      const channels = streams.split(',').filter((s) => s.length > 0);
      const error = subscribe(ws, channels, true);
      if (error) reply(ws, { op: 'error', code: 'unknown_channel', msg: error });
      else reply(ws, { op: 'subscribed', channels });
    }
    ws.on('message', (data, isBinary) => {
      const text = isBinary ? null : data.toString();
      reply(ws, handleRequest(text, (channels, add) => subscribe(ws, channels, add)));
    });
    ws.on('close', () => subscribe(ws, [...ws.specs], false));
  });
});

readTicks((obj, kind) => {
  const all = wildcard.get(kind);
  const some = exact.get(obj.ch);
  if (!all && !some) return;
  const text = JSON.stringify(obj);
  // The readyState check is the one in ws's broadcast example: a closing socket stays
  // subscribed until its 'close' event.
  if (all) for (const ws of all) if (ws.readyState === WebSocket.OPEN) ws.send(text);
  // A socket on both `trades.*` and `trades.X` gets the tick once.
  if (some) {
    for (const ws of some) {
      if (ws.readyState === WebSocket.OPEN && !all?.has(ws)) ws.send(text);
    }
  }
});

listen(server, opts);
