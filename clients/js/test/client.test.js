// The client's sequence discipline and book checks, fed messages directly (no network).

import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { gzipSync } from 'node:zlib';

import { COUNTER_NAMES, Client, Gap, SubscribeError, decimal, decodeBinary, withVersion } from '../src/index.js';

/**
 * zlib's CRC-32 of `text`, from a gzip trailer (independent of the library's).
 * @param {string} text
 */
function crc(text) {
  const gz = gzipSync(Buffer.from(text, 'utf8'));
  return gz.readUInt32LE(gz.length - 8);
}

/** A client on `channels`, recording what its callbacks and its logger get. */
class Recorder {
  constructor(channels = ['trades.BTC-USD', 'book.BTC-USD']) {
    this.messages = [];
    this.gaps = [];
    this.books = [];
    this.logs = { info: [], warn: [], error: [] };
    const logger = Object.fromEntries(
      Object.keys(this.logs).map((level) => [level, (...args) => this.logs[level].push(args.join(' '))]),
    );
    this.client = new Client('ws://127.0.0.1:1/ws', channels, {
      onMessage: (msg) => this.messages.push(msg),
      onGap: (gap) => this.gaps.push(gap),
      onBook: (ch, book) => this.books.push([ch, book.checksum()]),
      logger,
    });
  }

  /** Hands each message to the client as a text frame (strings as they are). */
  feed(...msgs) {
    for (const m of msgs) this.client.handleText(typeof m === 'string' ? m : JSON.stringify(m));
  }
}

/** A book.BTC-USD message whose crc is that of the string `crcOf`. */
const bookMsg = (seq, type, bids, asks, crcOf) => ({
  ch: 'book.BTC-USD', seq, ts: 1, type, bids, asks, crc: crc(crcOf),
});

const trade = (seq, ch = 'trades.BTC-USD') => ({ ch, seq, ts: 1, px: '1.00', qty: '1.0', side: 'buy' });

describe('sequences', () => {
  it('counts consecutive messages, duplicates and undeclared jumps', () => {
    const r = new Recorder();
    r.feed({ op: 'subscribed', id: 1, channels: ['trades.BTC-USD'], epoch: 'e1' });
    r.feed(trade(5), trade(6), trade(6), trade(4), trade(9));
    const c = r.client.counters;
    assert.deepEqual([c.messages, c.duplicates, c.gaps_undeclared], [3, 2, 1]);
    assert.deepEqual(r.gaps, [new Gap('trades.BTC-USD', 'undeclared', 7, 8)]);
    assert.deepEqual(r.messages.map((m) => m.seq), [5, 6, 9]);
    assert.equal(r.logs.warn.length, 1);
  });

  it('takes a gap notice as declaring the jump', () => {
    const r = new Recorder();
    const gap = { op: 'gap', ch: 'trades.BTC-USD', from: 2, to: 5, reason: 'slow_consumer' };
    r.feed(trade(1), gap, trade(6));
    const c = r.client.counters;
    assert.deepEqual([c.gaps_declared, c.gaps_undeclared, c.messages], [1, 0, 2]);
    assert.deepEqual(r.gaps, [new Gap('trades.BTC-USD', 'slow_consumer', 2, 5)]);
  });

  it('starts channels again when not resumed, and everything on a new epoch', () => {
    const r = new Recorder();
    r.feed({ op: 'subscribed', id: 1, epoch: 'e1' }, trade(10), trade(7, 'trades.ETH-USD'));
    const resumed = { 'trades.BTC-USD': false, 'trades.ETH-USD': true };
    r.feed({ op: 'subscribed', id: 2, epoch: 'e1', resumed });
    r.feed(trade(100), trade(8, 'trades.ETH-USD'));
    assert.deepEqual(r.gaps, [new Gap('trades.BTC-USD', 'not_resumed', 11, null)]);
    const none = { 'trades.BTC-USD': false, 'trades.ETH-USD': false };
    r.feed({ op: 'subscribed', id: 3, epoch: 'e2', resumed: none });
    r.feed(trade(1), trade(1, 'trades.ETH-USD'));
    const c = r.client.counters;
    assert.deepEqual([c.resumed_channels, c.not_resumed_channels], [1, 3]);
    assert.deepEqual([c.gaps_undeclared, c.duplicates, c.gaps_declared], [0, 0, 3]);
    assert.deepEqual(r.gaps.slice(1), [
      new Gap('trades.BTC-USD', 'new_epoch'),
      new Gap('trades.ETH-USD', 'new_epoch'),
    ]);
    assert.equal(r.client.epoch, 'e2');
  });

  it('never throws on garbage', () => {
    const r = new Recorder();
    r.feed('not json', '[1,2]', 'null', { ch: 5, seq: 'x' }, { op: 'gap', ch: 'x' });
    r.feed({ ch: 'book.BTC-USD', seq: 1, type: 'snapshot' }); // no sides
    r.feed({ ch: 'book.BTC-USD', seq: 2, type: 'update', bids: [['x', 'y']] });
    r.feed({ op: 'subscribed', resumed: [true] }, { op: 'error', code: 'unknown_channel' }, { op: 42 });
    assert.equal(r.logs.warn.length, 7);
    assert.deepEqual(r.logs.error, []);
    assert.equal(r.client.counters.gaps_undeclared, 0);
    assert.equal(r.client.book('book.BTC-USD'), null);
  });

  it('logs a failing callback and goes on', () => {
    const client = new Client('ws://127.0.0.1:1/ws', ['trades.BTC-USD'], {
      onMessage: () => {
        throw new Error('boom');
      },
      logger: { info() {}, warn() {}, error: (...args) => errors.push(args) },
    });
    const errors = [];
    client.handleText(JSON.stringify(trade(1)));
    client.handleText(JSON.stringify(trade(2)));
    assert.equal(errors.length, 2);
    assert.equal(client.counters.messages, 2);
  });

  it('has the nine counters of the Python client, in its order', () => {
    const r = new Recorder();
    assert.deepEqual(Object.keys(r.client.counters), [...COUNTER_NAMES]);
    assert.deepEqual(COUNTER_NAMES, [
      'messages', 'reconnects', 'resumed_channels', 'not_resumed_channels', 'gaps_declared',
      'gaps_undeclared', 'duplicates', 'crc_ok', 'crc_bad',
    ]);
    r.client.counters.messages = 99; // a copy
    assert.equal(r.client.counters.messages, 0);
  });

  it('reconnects at once on a shutdown notice', () => {
    const r = new Recorder();
    assert.equal(r.client.leaving, false);
    r.feed({ op: 'shutdown', in_ms: 3000, reason: 'server_shutdown' });
    assert.equal(r.client.leaving, true);
  });

  it('needs channels, and a WebSocket class to run', async () => {
    assert.throws(() => new Client('ws://127.0.0.1:1/ws', []), TypeError);
    const client = new Client('ws://127.0.0.1:1/ws', ['trades.*'], { WebSocket: null });
    if (globalThis.WebSocket === undefined) await assert.rejects(client.run(), TypeError);
    assert.equal(SubscribeError.name, 'SubscribeError');
  });
});

describe('books', () => {
  it('verifies checksums and resubscribes on a mismatch', () => {
    const r = new Recorder();
    const snap = bookMsg(40, 'snapshot', [['10.00', '1.0']], [['10.10', '2.0']], '10.00:1.0:10.10:2.0');
    const good = bookMsg(41, 'update', [['10.00', '0.0']], [], '10.10:2.0');
    const bad = { ...bookMsg(42, 'update', [], [['10.20', '1.0']], ''), crc: 12345 };
    r.feed(snap, good);
    assert.equal(r.client.book('book.BTC-USD').checksum(), good.crc);
    r.feed(bad);
    assert.equal(r.logs.warn.length, 1);
    const c = r.client.counters;
    assert.deepEqual([c.crc_ok, c.crc_bad], [2, 1]);
    assert.deepEqual(r.books.map(([, crc]) => crc), [snap.crc, good.crc]);
    assert.equal(r.client.book('book.BTC-USD'), null);
    const sent = r.client.pendingRequests.map((m) => [m.op, m.channels]);
    assert.deepEqual(sent, [['unsubscribe', ['book.BTC-USD']], ['subscribe', ['book.BTC-USD']]]);
    // Updates before the fresh snapshot are not applied; the snapshot repairs the book.
    r.feed({ ...good, seq: 43 }, { ...snap, seq: 50 });
    assert.equal(r.client.counters.crc_ok, 3);
    assert.equal(r.client.book('book.BTC-USD').checksum(), snap.crc);
    assert.equal(r.client.counters.gaps_undeclared, 0);
  });

  it('reconnects for a mismatch under a wildcard', () => {
    const r = new Recorder(['book.*']);
    r.feed(bookMsg(7, 'snapshot', [['1.00', '1']], [], '1.00:1'));
    r.feed({ ...bookMsg(8, 'update', [['1.00', '2']], [], ''), crc: 0 });
    assert.equal(r.logs.warn.length, 1);
    assert.deepEqual(r.client.pendingRequests, []);
    assert.equal(r.client.leaving, true);
  });

  it('resubscribes a book after a gap notice', () => {
    const r = new Recorder();
    r.feed(bookMsg(7, 'snapshot', [['1.00', '1']], [], '1.00:1'));
    r.feed({ op: 'gap', ch: 'book.BTC-USD', from: 8, to: 9, reason: 'ring_overflow' });
    assert.equal(r.client.book('book.BTC-USD'), null);
    assert.equal(r.client.pendingRequests.length, 2);
    assert.equal(r.client.counters.gaps_declared, 1);
  });

  it('resumes every seq but those of books out of step', () => {
    const r = new Recorder();
    r.feed({ op: 'subscribed', id: 1, epoch: 'e1' }, trade(3));
    r.feed(bookMsg(7, 'snapshot', [], [], '')); // empty book: crc 0
    const request = r.client.subscribeRequest();
    assert.deepEqual(request.resume, { 'trades.BTC-USD': 3, 'book.BTC-USD': 7 });
    assert.equal(request.epoch, 'e1');
    assert.deepEqual(request.channels, ['trades.BTC-USD', 'book.BTC-USD']);
    r.feed({ ...bookMsg(8, 'update', [], [], ''), crc: 1 });
    assert.deepEqual(r.client.subscribeRequest().resume, { 'trades.BTC-USD': 3 });
  });

  it('resumes nothing before an epoch is known', () => {
    const r = new Recorder();
    r.feed(trade(3));
    const request = r.client.subscribeRequest();
    assert.equal(request.resume, undefined);
    assert.equal(request.epoch, undefined);
  });
});

describe('protocol version', () => {
  it('names version 2 in the URL unless the URL names one', () => {
    assert.equal(withVersion('ws://h:1/ws'), 'ws://h:1/ws?v=2');
    assert.equal(withVersion('ws://h:1/ws?streams=trades.*'), 'ws://h:1/ws?streams=trades.*&v=2');
    assert.equal(withVersion('ws://h:1/ws?v=2&token=x'), 'ws://h:1/ws?v=2&token=x');
    assert.equal(new Client('ws://h:1/ws', ['trades.*']).url, 'ws://h:1/ws?v=2');
  });

  it('reads timestamps exactly: microseconds are safe integers', () => {
    const text = '{"ch":"trades.BTC-USD","seq":1,"ts":1764028800123456,"et":1764028800123000,"px":"1.00","qty":"1","side":"buy"}';
    const r = new Recorder(['trades.BTC-USD']);
    r.feed(text);
    assert.equal(r.messages[0].ts, 1764028800123456);
    assert.ok(Number.isSafeInteger(r.messages[0].ts) && Number.isSafeInteger(r.messages[0].et));
    assert.equal(JSON.stringify(r.messages[0]), text);
  });
});

describe('binary messages', () => {
  const instruments = [
    { symbol: 'BTC-USD', price_decimals: 2, size_decimals: 4 },
    { symbol: 'ETH-USD', price_decimals: 0, size_decimals: 3 },
  ];
  /** Little-endian fields: [bytes, value] pairs. */
  const bytes = (...fields) => {
    const out = [];
    for (const [n, v] of fields) {
      const b = Buffer.alloc(n);
      if (n === 1) b.writeUInt8(v);
      else if (n === 2) b.writeUInt16LE(v);
      else if (n === 4) b.writeUInt32LE(v);
      else b.writeBigInt64LE(BigInt(v));
      out.push(b);
    }
    return Buffer.concat(out);
  };

  it('formats mantissas as the gateway does', () => {
    assert.equal(decimal(6412350n, 2), '64123.50');
    assert.equal(decimal(5n, 4), '0.0005');
    assert.equal(decimal(-150n, 2), '-1.50');
    assert.equal(decimal(42n, 0), '42');
  });

  it('decodes a trade with et, a quote and a book update into their JSON', () => {
    const trade = bytes([1, 1], [1, 1], [4, 0], [8, 7], [8, 1764028800123456], [8, 1764028800123000],
      [8, 991], [8, 6412350], [8, 150], [1, 1]);
    assert.equal(
      JSON.stringify(decodeBinary(trade, instruments)),
      '{"ch":"trades.BTC-USD","seq":7,"ts":1764028800123456,"et":1764028800123000,"id":991,"px":"64123.50","qty":"0.0150","side":"sell"}',
    );
    const quote = bytes([1, 2], [1, 0], [4, 1], [8, 3], [8, 5], [8, 3201], [8, 1500], [8, 3202], [8, 2]);
    assert.equal(
      JSON.stringify(decodeBinary(quote, instruments)),
      '{"ch":"quotes.ETH-USD","seq":3,"ts":5,"bid":"3201","bsz":"1.500","ask":"3202","asz":"0.002"}',
    );
    const book = bytes([1, 3], [1, 0], [4, 0], [8, 9], [8, 5], [4, 42], [2, 1], [2, 0], [8, 6412300], [8, 0]);
    assert.equal(
      JSON.stringify(decodeBinary(book, instruments)),
      '{"ch":"book.BTC-USD","seq":9,"ts":5,"type":"update","bids":[["64123.00","0.0000"]],"asks":[],"crc":42}',
    );
    assert.equal(decodeBinary(book.subarray(0, book.length - 1), instruments), null, 'truncated');
    assert.equal(decodeBinary(Buffer.concat([book, Buffer.from([0])]), instruments), null, 'longer');
    assert.equal(decodeBinary(bytes([1, 1], [1, 0], [4, 5]), instruments), null, 'no symbol 5');
  });

  it('asks for format=binary', () => {
    const c = new Client('ws://h:1/ws', ['trades.*'], { binary: true });
    assert.equal(c.url, 'ws://h:1/ws?format=binary&v=2');
  });
});
