'use strict';
// What the Node baselines share: flags, the NDJSON tick stream on stdin, channel specs, the
// "listening on" line `bench compare` waits for, and a prompt exit on SIGTERM/SIGINT.

const KINDS = new Set(['trades', 'quotes', 'book']);

/** `--host H --port P` (defaults 127.0.0.1 and 0, an ephemeral port). */
function parseArgs(argv) {
  const opts = { host: '127.0.0.1', port: 0 };
  for (let i = 0; i < argv.length; i += 2) {
    const [flag, value] = [argv[i], argv[i + 1]];
    if (flag === '--host' && value !== undefined) opts.host = value;
    else if (flag === '--port' && /^\d+$/.test(value ?? '')) opts.port = Number(value);
    else {
      process.stderr.write(`usage: node ${process.argv[1]} [--host 127.0.0.1] [--port 0]\n`);
      process.exit(2);
    }
  }
  return opts;
}

/**
 * A channel spec `kind.SYMBOL` or `kind.*`, as `{ kind, symbol }` (symbol '*' for a
 * wildcard), or null if it is not one.
 */
function parseSpec(spec) {
  if (typeof spec !== 'string') return null;
  const dot = spec.indexOf('.');
  if (dot <= 0 || dot === spec.length - 1) return null;
  const kind = spec.slice(0, dot);
  return KINDS.has(kind) ? { kind, symbol: spec.slice(dot + 1) } : null;
}

/**
 * Calls `onTick(obj, kind)` for every NDJSON line on stdin. Splits chunks by hand: readline
 * would cost the baseline more than its own work and make the comparison unfair to it.
 */
function readTicks(onTick) {
  let rest = '';
  process.stdin.setEncoding('utf8');
  process.stdin.on('data', (chunk) => {
    const lines = (rest + chunk).split('\n');
    rest = lines.pop();
    for (const line of lines) {
      if (line.length === 0) continue;
      let obj;
      try {
        obj = JSON.parse(line);
      } catch (e) {
        process.stderr.write(`skipping a line that is not JSON: ${e.message}\n`);
        continue;
      }
      // A line of `null` or `42` parses too; only objects with a `kind.X` channel are ticks.
      const ch = obj?.ch;
      const dot = typeof ch === 'string' ? ch.indexOf('.') : -1;
      if (dot <= 0) continue;
      onTick(obj, ch.slice(0, dot));
    }
  });
  // End of the feed: keep serving the clients that are connected.
  process.stdin.on('end', () => process.stderr.write('feed ended; still serving\n'));
}

/** Listens, then prints the one line on stdout that tells where. */
function listen(server, { host, port }) {
  server.listen(port, host, () => {
    const { address, family, port: bound } = server.address();
    const host = family === 'IPv6' ? `[${address}]` : address;
    process.stdout.write(`listening on http://${host}:${bound}\n`);
  });
}

for (const signal of ['SIGTERM', 'SIGINT']) process.on(signal, () => process.exit(0));

/**
 * One client message in tickfan's protocol subset: `subscribe` / `unsubscribe` with `channels`,
 * applied through `subscribe(channels, add)` (which returns an error text or nothing). Returns
 * the reply to send. `text` is null for a binary message.
 */
function handleRequest(text, subscribe) {
  let req;
  try {
    if (text === null) throw new Error('binary');
    req = JSON.parse(text);
  } catch {
    return { op: 'error', code: 'bad_request', msg: 'not a JSON text message' };
  }
  const add = req?.op === 'subscribe';
  if ((add || req?.op === 'unsubscribe') && Array.isArray(req.channels)) {
    const error = subscribe(req.channels, add);
    if (error) return { op: 'error', id: req.id, code: 'unknown_channel', msg: error };
    return { op: add ? 'subscribed' : 'unsubscribed', id: req.id, channels: req.channels };
  }
  return { op: 'error', id: req?.id, code: 'bad_request', msg: 'expected subscribe or unsubscribe with channels' };
}

module.exports = { parseArgs, parseSpec, readTicks, listen, handleRequest };
