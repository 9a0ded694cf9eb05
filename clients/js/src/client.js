/**
 * The tickfan WebSocket client: subscribe, check sequences, keep books, reconnect and resume.
 *
 * The wire protocol is `docs/protocol.md` (v1). In short: every data message carries its
 * channel's `seq`, which goes up by exactly one per message; a jump is only allowed when the
 * gateway declared it (a `gap` notice, a book `snapshot`, `resumed: false` after a reconnect,
 * or a new `epoch`). Anything else is counted as an undeclared gap.
 *
 * @module tickfan-client/client
 */

import { decodeBinary } from './binary.js';
import { BookError, OrderBook } from './book.js';

/** Reconnect backoff: the first delay, and the most it doubles up to (milliseconds). */
/**
 * The protocol version this client speaks, named in the URL (`?v=2`): a gateway that serves
 * another answers 400 instead of messages this client would misread.
 */
export const PROTOCOL_VERSION = 2;

/**
 * `url` with `v=PROTOCOL_VERSION` in its query unless it names a version already.
 * @param {string} url
 */
export function withVersion(url) {
  if (/[?&]v=/.test(url)) return url;
  return `${url}${url.includes('?') ? '&' : '?'}v=${PROTOCOL_VERSION}`;
}

export const BACKOFF_FIRST_MS = 100;
export const BACKOFF_MAX_MS = 5000;

/** How long a connection may take to open, and a close to be answered (milliseconds). */
const OPEN_TIMEOUT_MS = 10_000;
const CLOSE_TIMEOUT_MS = 1000;

/** Error codes of a subscribe that retrying cannot fix. */
export const FATAL_ERRORS = new Set([
  'unknown_channel',
  'bad_request',
  'forbidden',
  'too_many_channels',
]);

/** The counters {@link Client#counters} exposes, all starting at zero. */
export const COUNTER_NAMES = Object.freeze([
  'messages', // data messages accepted (duplicates excluded), snapshots included
  'reconnects', // connections after the first that got their subscription confirmed
  'resumed_channels', // channels a reconnect resumed exactly (`resumed: true`)
  'not_resumed_channels', // channels a reconnect could not resume (`resumed: false`)
  'gaps_declared', // discontinuities the gateway declared (reported to onGap)
  'gaps_undeclared', // seq jumps nothing explained (reported to onGap as "undeclared")
  'duplicates', // data messages dropped because their seq was not above the last one
  'crc_ok', // book messages whose crc matched the book after applying them
  'crc_bad', // book messages whose crc did not match (the channel is resubscribed)
]);

/**
 * A discontinuity in a channel's sequence.
 *
 * `reason` is the gateway's (`slow_consumer`, `conflated`, `feed`, `ring_overflow`),
 * `not_resumed` or `new_epoch` after a reconnect, or `undeclared` when the client saw a jump
 * nothing explained. `fromSeq`..`toSeq` (inclusive) are the missing seqs when known, else null.
 */
export class Gap {
  /**
   * @param {string} channel
   * @param {string} reason
   * @param {number | null} [fromSeq]
   * @param {number | null} [toSeq]
   */
  constructor(channel, reason, fromSeq = null, toSeq = null) {
    this.channel = channel;
    this.reason = reason;
    this.fromSeq = fromSeq;
    this.toSeq = toSeq;
    Object.freeze(this);
  }
}

/** The gateway refused the subscription for a reason a retry cannot fix. */
export class SubscribeError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'SubscribeError';
  }
}

/**
 * Where the client logs; `console` fits. `info` is for reconnects and notices, `warn` for bad
 * input and repairs, `error` for failures of callbacks or of the client itself.
 * @typedef {{info: (...args: unknown[]) => void, warn: (...args: unknown[]) => void,
 *   error: (...args: unknown[]) => void}} Logger
 */

/** The default logger: warnings and errors on the console, no info. */
const DEFAULT_LOGGER = Object.freeze({
  info() {},
  warn: (...args) => console.warn('tickfan-client:', ...args),
  error: (...args) => console.error('tickfan-client:', ...args),
});

/**
 * @typedef {object} ClientOptions
 * @property {typeof globalThis.WebSocket} [WebSocket] the WebSocket class (in Node, `ws`'s
 *   default export); the global `WebSocket` by default
 * @property {(msg: Record<string, any>, text?: string) => void} [onMessage] every data message,
 *   as parsed, in order, duplicates dropped; `text` is the frame as received, to print or store
 *   it byte for byte (`ts` and `et` are Unix microseconds: exact as Numbers)
 * @property {(gap: Gap) => void} [onGap] every discontinuity, declared or not
 * @property {(channel: string, book: OrderBook) => void} [onBook] after each `book.*` message
 *   applied and verified (the book is the client's own: read it, don't keep it)
 * @property {Logger} [logger]
 * @property {boolean} [binary] ask for trades, quotes and book updates as binary messages
 *   (`?format=binary`: less than half the bytes); they reach `onMessage` as the same objects
 *   (and `text`) their JSON would give
 */

/** A WebSocket's `readyState` values. */
const CONNECTING = 0;
const OPEN = 1;
const CLOSED = 3;

/** @param {unknown} value */
const isInt = (value) => Number.isInteger(value);

/** @param {unknown} text the first 200 characters of `text`, for logs */
const clip = (text) => String(text).slice(0, 200);

/**
 * The wildcard covering `channel`: `book.BTC-USD@5` -> `book.*@5`.
 * @param {string} channel
 */
const wildcardOf = (channel) => channel.replace(/^([^.]+)\.[^.@]+/, '$1.*');

/**
 * A tickfan client subscribed to `channels` (exact names or wildcards such as `trades.*`).
 *
 * `run()` connects and keeps going, reconnecting (and resuming) on any disconnect, until
 * `close()`; it rejects with {@link SubscribeError} if the gateway refuses the channels
 * themselves. Callbacks are called from the socket's events, so keep them quick; an exception
 * in one is logged, never thrown out of the client.
 */
export class Client {
  /** @type {Record<string, number>} */
  #counters = Object.fromEntries(COUNTER_NAMES.map((name) => [name, 0]));
  /** @type {string | null} */
  #epoch = null;
  /** @type {Map<string, number>} last seq per exact channel */
  #last = new Map();
  /** @type {Map<string, OrderBook>} books in step with the gateway */
  #books = new Map();
  /** @type {object[]} requests to send on the current connection */
  #outbox = [];
  #nextId = 0;
  /** @type {number | null} id of the current connection's subscribe */
  #subscribeId = null;
  #connections = 0; // connections whose subscription was confirmed
  #reconnectNow = false; // after a `shutdown` notice: no backoff
  #leave = false; // leave this connection (for a snapshot a wildcard cannot give)
  /** @type {import('./binary.js').Instrument[]} the `symbols` reply's, for binary messages */
  #instruments = [];
  #sawBinary = false;
  #closing = false;
  /** @type {(() => void) | null} ends the current connection, or the current backoff */
  #interrupt = null;
  /** @type {Logger} */
  #log;

  /**
   * @param {string} url the gateway's `/ws` URL, e.g. `ws://127.0.0.1:8080/ws` (`?v=2` is
   *   added: see {@link PROTOCOL_VERSION})
   * @param {string[]} channels
   * @param {ClientOptions} [options]
   */
  constructor(url, channels, { WebSocket, onMessage, onGap, onBook, logger, binary } = {}) {
    if (!Array.isArray(channels) || channels.length === 0) {
      throw new TypeError('at least one channel is needed');
    }
    /** Trades, quotes and book updates come as binary messages (`?format=binary`). */
    this.binary = binary === true;
    if (this.binary && !/[?&]format=/.test(url)) url += `${url.includes('?') ? '&' : '?'}format=binary`;
    this.url = withVersion(url);
    this.channels = [...channels];
    this.WebSocket = WebSocket ?? globalThis.WebSocket;
    this.onMessage = onMessage;
    this.onGap = onGap;
    this.onBook = onBook;
    this.#log = logger ?? DEFAULT_LOGGER;
    /** @type {string | null} the last `status` notice: "live" or "stale" */
    this.feedStatus = null;
  }

  /** A copy of the counters (see {@link COUNTER_NAMES}). */
  get counters() {
    return { ...this.#counters };
  }

  /** The epoch of the last `subscribed` reply, or null before one. */
  get epoch() {
    return this.#epoch;
  }

  /**
   * @param {string} channel
   * @returns {OrderBook | null} the book of `channel`, or null while none is in step (no
   *   snapshot yet)
   */
  book(channel) {
    return this.#books.get(channel) ?? null;
  }

  // -- connection loop ------------------------------------------------------------------

  /**
   * Connects, subscribes and reads until {@link Client#close}, reconnecting on any disconnect.
   *
   * Backoff between attempts: 0.1 s doubling up to 5 s, with jitter; none after a `shutdown`
   * notice. Every reconnect resumes with the epoch and the last seqs.
   * @returns {Promise<void>} resolves after `close()`; rejects with {@link SubscribeError}, or
   *   when the URL or the WebSocket class cannot be used at all
   */
  async run() {
    if (typeof this.WebSocket !== 'function') {
      throw new TypeError('no WebSocket class: pass one as options.WebSocket (in Node, ws)');
    }
    let delay = BACKOFF_FIRST_MS;
    while (!this.#closing) {
      const confirmedBefore = this.#connections;
      await this.#session();
      if (this.#closing) break;
      if (this.#reconnectNow) {
        this.#reconnectNow = false;
        delay = BACKOFF_FIRST_MS;
        continue;
      }
      if (this.#connections > confirmedBefore) delay = BACKOFF_FIRST_MS; // it worked: start over
      await this.#sleep(delay / 2 + Math.random() * (delay / 2));
      delay = Math.min(delay * 2, BACKOFF_MAX_MS);
    }
  }

  /** Stops {@link Client#run}: closes the connection, and no reconnect follows. */
  close() {
    this.#closing = true;
    this.#interrupt?.();
  }

  /**
   * Waits `ms`, or less if {@link Client#close} is called meanwhile.
   * @param {number} ms
   */
  #sleep(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        this.#interrupt = null;
        resolve();
      };
      const timer = setTimeout(done, ms);
      this.#interrupt = done;
    });
  }

  /**
   * One connection: subscribe (resuming what we have), then read until it ends.
   * @returns {Promise<void>} resolves when the connection is over, whatever the reason;
   *   rejects with a {@link SubscribeError} or when the socket cannot even be made
   */
  #session() {
    return new Promise((resolve, reject) => {
      this.#outbox.length = 0;
      this.#leave = false;
      const ws = new this.WebSocket(this.url); // throws on a malformed URL: run() rejects
      if (this.binary) ws.binaryType = 'arraybuffer';
      let over = false;
      const end = (/** @type {unknown} */ why) => {
        if (over) return;
        over = true;
        clearTimeout(openTimer);
        this.#interrupt = null;
        shut(ws);
        if (why instanceof SubscribeError) {
          reject(why);
        } else {
          if (why !== undefined) this.#log.info(`connection to ${this.url} ended: ${why}`);
          resolve();
        }
      };
      const openTimer = setTimeout(() => end('no answer within 10 s'), OPEN_TIMEOUT_MS);
      this.#interrupt = () => end(undefined);

      ws.addEventListener('open', () => {
        if (over) return;
        clearTimeout(openTimer);
        // Binary messages name their symbol by its index in this reply (which comes first).
        if (this.binary) send(ws, { op: 'symbols', id: 'instruments' });
        const request = this.subscribeRequest();
        this.#subscribeId = request.id;
        send(ws, request);
      });
      ws.addEventListener('message', (event) => {
        if (over) return;
        try {
          if (typeof event.data === 'string') this.handleText(event.data);
          else this.#handleBinary(event.data);
        } catch (e) {
          end(e); // a SubscribeError: the only exception handleText lets out
          return;
        }
        for (const request of this.#outbox.splice(0)) send(ws, request);
        if (this.#reconnectNow || this.#leave) {
          this.#leave = false;
          end('leaving to reconnect');
        }
      });
      ws.addEventListener('error', (event) => end(event.message || 'WebSocket error'));
      ws.addEventListener('close', (event) => end(`closed ${event.code} ${event.reason}`.trim()));
    });
  }

  /**
   * The subscribe a new connection sends: every channel, resuming every seq we hold.
   *
   * A book is resumed only while it is in step; one waiting for a snapshot is left out, so
   * the gateway starts it again with one. Each call takes a new request id.
   * @returns {{op: 'subscribe', id: number, channels: string[], epoch?: string,
   *   resume?: Record<string, number>}}
   */
  subscribeRequest() {
    const request = { op: 'subscribe', id: this.#requestId(), channels: this.channels };
    const resume = {};
    for (const [ch, seq] of this.#last) {
      if (!ch.startsWith('book.') || this.#books.has(ch)) resume[ch] = seq;
    }
    if (Object.keys(resume).length > 0 && this.#epoch !== null) {
      Object.assign(request, { epoch: this.#epoch, resume });
    }
    return request;
  }

  /** Requests waiting to be sent on the current connection (a copy). */
  get pendingRequests() {
    return this.#outbox.map((request) => ({ ...request }));
  }

  /**
   * True when the client is about to leave the current connection: after a `shutdown`
   * notice, or to get a fresh snapshot of a book covered by a wildcard.
   */
  get leaving() {
    return this.#reconnectNow || this.#leave;
  }

  #requestId() {
    this.#nextId += 1;
    return this.#nextId;
  }

  // -- message handling (no I/O: requests go to the outbox) -----------------------------

  /**
   * Handles one text frame from the gateway. Bad input is logged, never thrown.
   * @param {string} text
   * @throws {SubscribeError} when the gateway refuses the connection's subscribe for good
   */
  handleText(text) {
    let msg;
    try {
      msg = JSON.parse(text);
    } catch {
      this.#log.warn(`ignoring a frame that is not JSON: ${clip(text)}`);
      return;
    }
    if (msg === null || typeof msg !== 'object' || Array.isArray(msg)) {
      this.#log.warn(`ignoring a frame that is not a JSON object: ${clip(text)}`);
      return;
    }
    try {
      this.handle(msg, text);
    } catch (e) {
      if (e instanceof SubscribeError) throw e;
      // A bug or a message of an unexpected shape: log, keep going.
      this.#log.error(`could not handle ${clip(text)}:`, e);
    }
  }

  /**
   * Handles one binary frame: decoded into the JSON message it stands for, then as that.
   * @param {ArrayBuffer | ArrayBufferView} data
   */
  #handleBinary(data) {
    const msg = this.binary ? decodeBinary(data, this.#instruments) : null;
    if (msg === null) {
      this.#log.warn(`ignoring a binary frame that is not a data message (${data.byteLength} bytes)`);
      return;
    }
    if (!this.#sawBinary) {
      this.#sawBinary = true;
      this.#log.info('receiving binary data messages');
    }
    this.handle(msg, JSON.stringify(msg));
  }

  /**
   * Handles one parsed message: a reply or notice (`op`) or a data message (`ch`).
   * @param {Record<string, any>} msg
   * @param {string} [text] the frame it was parsed from, passed on to `onMessage`
   * @throws {SubscribeError} as {@link Client#handleText}
   */
  handle(msg, text) {
    switch (msg.op) {
      case undefined:
        this.#onData(msg, text);
        break;
      case 'subscribed':
        this.#onSubscribed(msg);
        break;
      case 'gap':
        this.#onGapNotice(msg);
        break;
      case 'shutdown':
        this.#log.info(`gateway shutting down (${msg.reason}): reconnecting now`);
        this.#reconnectNow = true;
        break;
      case 'status':
        this.feedStatus = msg.feed ?? null;
        this.#log.info(`feed is ${this.feedStatus}`);
        break;
      case 'error':
        this.#onError(msg);
        break;
      case 'symbols':
        if (Array.isArray(msg.instruments)) this.#instruments = msg.instruments;
        break;
      default: // pong, unsubscribed, list and unknown ops need nothing.
    }
  }

  /** @param {Record<string, any>} msg */
  #onSubscribed(msg) {
    const epoch = msg.epoch;
    if (this.#subscribeId !== null && msg.id === this.#subscribeId) {
      this.#subscribeId = null;
      this.#connections += 1;
      if (this.#connections > 1) this.#counters.reconnects += 1;
    }
    const newEpoch = this.#epoch !== null && epoch !== this.#epoch;
    if (newEpoch) {
      // Another run of the seqs: nothing we hold means anything any more.
      for (const ch of [...new Set([...this.#last.keys(), ...this.#books.keys()])].sort()) {
        this.#declare(new Gap(ch, 'new_epoch'));
      }
      this.#last.clear();
      this.#books.clear();
    }
    if (typeof epoch === 'string') this.#epoch = epoch;
    const resumed = msg.resumed;
    if (resumed === null || typeof resumed !== 'object' || Array.isArray(resumed)) return;
    for (const [ch, ok] of Object.entries(resumed)) {
      if (ok === true) {
        this.#counters.resumed_channels += 1;
        continue;
      }
      this.#counters.not_resumed_channels += 1;
      if (!newEpoch && this.#last.has(ch)) {
        this.#declare(new Gap(ch, 'not_resumed', this.#last.get(ch) + 1, null));
      }
      this.#last.delete(ch);
      this.#books.delete(ch);
    }
  }

  /** @param {Record<string, any>} msg */
  #onGapNotice(msg) {
    const { ch, from: start, to: end } = msg;
    if (!(typeof ch === 'string' && isInt(start) && isInt(end))) {
      this.#log.warn(`ignoring a malformed gap notice: ${clip(JSON.stringify(msg))}`);
      return;
    }
    const last = this.#last.get(ch);
    if (last !== undefined && start > last + 1) this.#undeclared(ch, last + 1, start - 1);
    if (last === undefined || end > last) this.#last.set(ch, end);
    const reason = msg.reason === undefined ? 'unknown' : String(msg.reason);
    this.#declare(new Gap(ch, reason, start, end));
    if (ch.startsWith('book.')) this.#resync(ch); // a book with a hole is wrong until a snapshot
  }

  /** @param {Record<string, any>} msg */
  #onError(msg) {
    const { code } = msg;
    this.#log.warn(`gateway error ${code}: ${msg.msg}`);
    if (this.#subscribeId !== null && msg.id === this.#subscribeId && FATAL_ERRORS.has(code)) {
      throw new SubscribeError(`${code}: ${msg.msg}`);
    }
  }

  /**
   * @param {Record<string, any>} msg
   * @param {string} [text]
   */
  #onData(msg, text) {
    const { ch, seq } = msg;
    if (!(typeof ch === 'string' && isInt(seq))) {
      this.#log.warn(`ignoring a message without ch and seq: ${clip(text ?? JSON.stringify(msg))}`);
      return;
    }
    const isBook = ch.startsWith('book.');
    const snapshot = isBook && msg.type === 'snapshot';
    const last = this.#last.get(ch);
    if (last !== undefined && !snapshot) {
      // A snapshot always starts the channel again.
      if (seq <= last) {
        this.#counters.duplicates += 1;
        return;
      }
      if (seq !== last + 1) this.#undeclared(ch, last + 1, seq - 1);
    }
    this.#last.set(ch, seq);
    this.#counters.messages += 1;
    this.#call(this.onMessage, msg, text);
    if (isBook) this.#onBookMessage(ch, msg, snapshot);
  }

  /**
   * @param {string} ch
   * @param {Record<string, any>} msg
   * @param {boolean} snapshot
   */
  #onBookMessage(ch, msg, snapshot) {
    if (snapshot) this.#books.set(ch, new OrderBook());
    const book = this.#books.get(ch);
    if (book === undefined) return; // out of step: waiting for the snapshot a resubscribe brings
    try {
      book.apply(msg);
    } catch (e) {
      if (!(e instanceof BookError)) throw e;
      this.#log.warn(`${ch} seq ${msg.seq}: cannot apply (${e.message}): resubscribing`);
      this.#resync(ch);
      return;
    }
    if (book.checksum() !== msg.crc) {
      this.#counters.crc_bad += 1;
      this.#log.warn(`${ch} seq ${msg.seq}: checksum mismatch: resubscribing`);
      this.#resync(ch);
      return;
    }
    this.#counters.crc_ok += 1;
    this.#call(this.onBook, ch, book);
  }

  /**
   * Drops the book of `ch` and asks for a fresh snapshot.
   *
   * A channel subscribed by name is unsubscribed and subscribed again on this connection. One
   * covered by a wildcard cannot be (the wildcard keeps it streaming), so the client
   * reconnects instead, leaving that book out of the resume.
   * @param {string} ch
   */
  #resync(ch) {
    if (!this.#books.delete(ch)) return; // already waiting for a snapshot
    if (this.channels.includes(ch) && !this.channels.includes(wildcardOf(ch))) {
      this.#outbox.push({ op: 'unsubscribe', id: this.#requestId(), channels: [ch] });
      this.#outbox.push({ op: 'subscribe', id: this.#requestId(), channels: [ch] });
    } else {
      this.#leave = true; // with the usual backoff, in case the books never agree
    }
  }

  /**
   * @param {string} ch
   * @param {number} start
   * @param {number} end
   */
  #undeclared(ch, start, end) {
    this.#counters.gaps_undeclared += 1;
    this.#log.warn(`${ch}: seqs ${start}..${end} missing without a gap notice`);
    this.#call(this.onGap, new Gap(ch, 'undeclared', start, end));
  }

  /** @param {Gap} gap */
  #declare(gap) {
    this.#counters.gaps_declared += 1;
    this.#call(this.onGap, gap);
  }

  /**
   * Calls a user callback; an exception in it is logged, not propagated.
   * @param {((...args: any[]) => void) | undefined} callback
   * @param {...unknown} args
   */
  #call(callback, ...args) {
    if (typeof callback !== 'function') return;
    try {
      callback(...args);
    } catch (e) {
      this.#log.error(`callback ${callback.name || '(anonymous)'} failed:`, e);
    }
  }
}

/**
 * Sends one request as a JSON text frame; a socket that is no longer open drops it (the next
 * connection subscribes afresh anyway).
 * @param {WebSocket} ws
 * @param {object} request
 */
function send(ws, request) {
  if (ws.readyState !== OPEN) return;
  try {
    ws.send(JSON.stringify(request));
  } catch {
    // Closing under our feet: the close event ends the session.
  }
}

/**
 * Closes a socket we are done with, without waiting: a polite close frame, then (with `ws`,
 * which waits up to 30 s for the answer) a hard stop if the peer does not answer within 1 s.
 * @param {WebSocket & {terminate?: () => void}} ws
 */
function shut(ws) {
  if (ws.readyState === CLOSED) return;
  try {
    if (ws.readyState === CONNECTING || ws.readyState === OPEN) ws.close(1000);
  } catch {
    // Already closing.
  }
  if (typeof ws.terminate === 'function') {
    const timer = setTimeout(() => ws.terminate(), CLOSE_TIMEOUT_MS);
    ws.addEventListener('close', () => clearTimeout(timer));
  }
}
