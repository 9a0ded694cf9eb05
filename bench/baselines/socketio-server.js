'use strict';
// Baseline: socket.io 4 the way its users broadcast market data. Default server options (no
// tuning: default ping interval, no compression, both transports allowed), one room per
// channel spec, and `io.to(rooms).emit` per tick: socket.io encodes the packet once per
// broadcast and hands it to every socket in the union of the rooms.

const http = require('node:http');
const { Server } = require('socket.io');
const { parseArgs, parseSpec, readTicks, listen } = require('./common');

const opts = parseArgs(process.argv.slice(2));
const server = http.createServer();
const io = new Server(server);

io.on('connection', (socket) => {
  const handle = (add) => (channels, ack) => {
    const list = Array.isArray(channels) ? channels : [channels];
    const bad = list.find((c) => !parseSpec(c));
    if (bad !== undefined) {
      if (typeof ack === 'function') ack({ error: `unknown channel ${JSON.stringify(bad)}` });
      return;
    }
    for (const c of list) add ? socket.join(c) : socket.leave(c);
    if (typeof ack === 'function') ack({ channels: list });
  };
  socket.on('subscribe', handle(true));
  socket.on('unsubscribe', handle(false));
});

readTicks((obj, kind) => {
  // Rooms are named by spec: `trades.BTC-USD` for one channel, `trades.*` for all of a kind.
  io.to([obj.ch, `${kind}.*`]).emit('tick', obj);
});

listen(server, opts);
