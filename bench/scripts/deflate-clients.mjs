// N WebSocket clients (Node's `ws`), with or without permessage-deflate, on one gateway;
// prints one JSON line: messages received, undeclared seq jumps, what was negotiated.
// usage: node bench/scripts/deflate-clients.mjs URL N SECONDS deflate|plain
import WebSocket from 'ws';

const [url, n, seconds, mode] = process.argv.slice(2);
const deflate = mode === 'deflate';
let messages = 0;
let jumps = 0;
const negotiated = new Set();
const sockets = [];
for (let i = 0; i < Number(n); i++) {
  const ws = new WebSocket(url, { perMessageDeflate: deflate });
  const last = new Map();
  ws.on('upgrade', (res) => negotiated.add(res.headers['sec-websocket-extensions'] ?? 'none'));
  ws.on('message', (data) => {
    messages++;
    const m = JSON.parse(data);
    if (m.ch === undefined || m.type === 'snapshot') return;
    const prev = last.get(m.ch);
    if (prev !== undefined && m.seq !== prev + 1) jumps++;
    last.set(m.ch, m.seq);
  });
  ws.on('error', (e) => console.error(`client ${i}: ${e.message}`));
  sockets.push(ws);
}
setTimeout(() => {
  console.log(JSON.stringify({ mode, clients: Number(n), messages, jumps, negotiated: [...negotiated] }));
  for (const ws of sockets) ws.terminate();
  process.exit(0);
}, Number(seconds) * 1000);
