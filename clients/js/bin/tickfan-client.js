#!/usr/bin/env node
/**
 * Command line: `tickfan-client [--url URL] [--binary] [--duration S] [--quiet] [--verbose]
 * CHANNEL...`.
 *
 * Prints each data message as one JSON line (unless `--quiet`) and, when it stops (after
 * `--duration` seconds, on Ctrl-C or SIGTERM), the counters as one JSON line prefixed with
 * `summary: `. Needs a WebSocket class: the `ws` package (found in the node_modules of this
 * directory or a parent, e.g. the tickfan repository's root after `npm ci`), or Node's global
 * WebSocket (Node >= 22).
 */

import { parseArgs } from 'node:util';

import { Client, SubscribeError } from '../src/index.js';

const USAGE = `usage: tickfan-client [--url URL] [--binary] [--duration SECONDS] [--quiet]
                      [--verbose] CHANNEL...

Subscribe to tickfan channels and print their messages as JSON lines.

  --url URL           the gateway's /ws URL (default ws://127.0.0.1:8080/ws)
  --binary            receive trades, quotes and book updates as binary messages
                      (printed as the same JSON)
  --duration SECONDS  stop after this many seconds
  --quiet             print only the summary, not each message
  -v, --verbose       log reconnects and such
  CHANNEL             e.g. trades.BTC-USD, book.ETH-USD, quotes.*`;

/**
 * The command line's options, or an exit after the usage.
 * @param {string[]} argv
 */
function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        url: { type: 'string', default: 'ws://127.0.0.1:8080/ws' },
        binary: { type: 'boolean', default: false },
        duration: { type: 'string' },
        quiet: { type: 'boolean', default: false },
        verbose: { type: 'boolean', short: 'v', default: false },
        help: { type: 'boolean', short: 'h', default: false },
      },
    });
  } catch (e) {
    usageError(e.message);
  }
  const { values, positionals } = parsed;
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (positionals.length === 0) usageError('at least one CHANNEL is needed');
  const duration = values.duration === undefined ? null : Number(values.duration);
  if (duration !== null && !(duration >= 0)) usageError(`bad --duration: ${values.duration}`);
  return { ...values, duration, channels: positionals };
}

/** @param {string} message */
function usageError(message) {
  console.error(`${USAGE}\n\ntickfan-client: ${message}`);
  process.exit(2);
}

/** The WebSocket class to use: `ws`, else the global one. */
async function webSocketClass() {
  try {
    return (await import('ws')).default;
  } catch (e) {
    if (typeof globalThis.WebSocket === 'function') return globalThis.WebSocket;
    const why = 'needs the ws package (npm ci at the repository root) or Node >= 22';
    throw new Error(`${why}: ${e.message}`);
  }
}

/**
 * A logger to stderr: warnings and errors, and with `verbose` info too.
 * @param {boolean} verbose
 */
function stderrLogger(verbose) {
  const line =
    (level) =>
    (...args) =>
      console.error(new Date().toISOString(), 'tickfan-client', level, ...args);
  return { info: verbose ? line('INFO') : () => {}, warn: line('WARNING'), error: line('ERROR') };
}

let stdoutOpen = true;
process.stdout.on('error', (e) => {
  if (e.code !== 'EPIPE') throw e;
  stdoutOpen = false; // `| head`: keep counting, stop printing
});

/** @param {string} line */
function printLine(line) {
  if (stdoutOpen) process.stdout.write(`${line}\n`);
}

async function main() {
  const args = parse(process.argv.slice(2));
  const logger = stderrLogger(args.verbose);
  let status = 0;
  let client = null;
  try {
    client = new Client(args.url, args.channels, {
      WebSocket: await webSocketClass(),
      logger,
      binary: args.binary,
      // The frame as received (a binary one as the JSON it stands for), byte for byte.
      onMessage: args.quiet ? undefined : (msg, text) => printLine(text ?? JSON.stringify(msg)),
      onGap: (gap) => logger.info(`gap: ${JSON.stringify(gap)}`),
    });
    const stop = () => client.close();
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
    const timer = args.duration === null ? null : setTimeout(stop, args.duration * 1000);
    try {
      await client.run();
    } finally {
      clearTimeout(timer);
      process.off('SIGINT', stop);
      process.off('SIGTERM', stop);
    }
  } catch (e) {
    const refused = e instanceof SubscribeError ? 'subscription refused: ' : '';
    console.error(`tickfan-client: ${refused}${e.message}`);
    status = 1;
  }
  if (client !== null) printLine(`summary: ${JSON.stringify(client.counters)}`);
  process.exitCode = status;
}

await main();
