// The order book and its checksum (docs/protocol.md, "Order books", "Book checksum").

import assert from 'node:assert/strict';
import { describe, it, beforeEach } from 'node:test';
import { gzipSync } from 'node:zlib';

import { BookError, OrderBook, checksum, crc32 } from '../src/book.js';

/**
 * A reference CRC-32, independent of the library's: the one gzip writes in its trailer
 * (RFC 1952: the CRC-32 of the data, little-endian, then its size), computed by zlib.
 * @param {string} text
 */
function referenceCrc(text) {
  const gz = gzipSync(Buffer.from(text, 'utf8'));
  return gz.readUInt32LE(gz.length - 8);
}

const snapshot = (bids, asks) => ({ ch: 'book.BTC-USD', seq: 1, type: 'snapshot', bids, asks });
const update = (bids, asks) => ({ ch: 'book.BTC-USD', seq: 2, type: 'update', bids, asks });

describe('checksum', () => {
  it("matches the protocol's worked example", () => {
    const book = new OrderBook();
    const bids = [['64123.00', '1.2000'], ['64122.50', '0.5000']];
    book.apply(snapshot(bids, [['64123.50', '0.4000']]));
    assert.equal(book.checksum(), 1666075937); // the value docs/protocol.md gives
    assert.equal(referenceCrc('64123.00:1.2000:64123.50:0.4000:64122.50:0.5000'), 1666075937);
    book.apply(update([['64122.50', '0.0000']], []));
    assert.equal(book.checksum(), 2079246967);
    assert.equal(referenceCrc('64123.00:1.2000:64123.50:0.4000'), 2079246967);
  });

  it('is CRC-32 as zlib computes it', () => {
    assert.equal(crc32(''), 0);
    assert.equal(crc32('123456789'), 0xcbf43926); // the CRC catalogue's check value
    for (const text of ['a', '1.00:2', 'x'.repeat(1000), '64123.00:1.2000']) {
      assert.equal(crc32(text), referenceCrc(text), text);
    }
  });

  it('is zero for an empty book', () => {
    assert.equal(new OrderBook().checksum(), 0);
    assert.equal(checksum([], []), 0);
  });

  it('covers the top ten of each side, interleaved; a shorter side stops', () => {
    const bids = Array.from({ length: 12 }, (_, i) => [`${100 - i}.00`, `${i + 1}.0`]); // 100.00 .. 89.00
    const asks = [['101.00', '7.5'], ['102.00', '8.5']];
    const book = new OrderBook();
    // The order of the levels on the wire does not matter.
    book.apply(snapshot([...bids].reverse(), [...asks].reverse()));
    const parts = ['100.00', '1.0', '101.00', '7.5', '99.00', '2.0', '102.00', '8.5'];
    for (let i = 2; i < 10; i++) parts.push(`${100 - i}.00`, `${i + 1}.0`);
    assert.equal(book.checksum(), referenceCrc(parts.join(':')));
    assert.equal(book.bids().length, 12);
    assert.equal(book.bids(10).length, 10);
    assert.equal(book.size, 14);
  });

  it('sorts prices numerically, not as strings', () => {
    const book = new OrderBook();
    const bids = [['9.50', '1'], ['10.25', '2'], ['100.00', '3'], ['10.2', '4'], ['0.999', '5']];
    const asks = [['200.00', '1'], ['1000.00', '2'], ['99.99', '3'], ['99.9901', '4']];
    book.apply(snapshot(bids, asks));
    const best = [['100.00', '3'], ['10.25', '2'], ['10.2', '4'], ['9.50', '1'], ['0.999', '5']];
    assert.deepEqual(book.bids(), best);
    assert.deepEqual(book.asks(), [['99.99', '3'], ['99.9901', '4'], ['200.00', '1'], ['1000.00', '2']]);
    assert.deepEqual(book.bestBid(), ['100.00', '3']);
    assert.deepEqual(book.bestAsk(), ['99.99', '3']);
    const expected = '100.00:3:99.99:3:10.25:2:99.9901:4:10.2:4:200.00:1:9.50:1:1000.00:2:0.999:5';
    assert.equal(book.checksum(), referenceCrc(expected));
  });

  it('treats differently written equal prices as one level', () => {
    const book = new OrderBook();
    book.apply(snapshot([['10.50', '1']], []));
    book.apply(update([['10.5', '2'], ['010.500', '3']], []));
    assert.deepEqual(book.bids(), [['010.500', '3']]);
    book.apply(update([['10.5000', '0']], []));
    assert.equal(book.size, 0);
    assert.equal(book.bestBid(), null);
    assert.equal(book.bestAsk(), null);
  });
});

describe('apply', () => {
  let book;
  beforeEach(() => {
    book = new OrderBook();
    book.apply(snapshot([['10.00', '1.0000'], ['9.90', '2.0000']], [['10.10', '3.0000']]));
  });

  it('sets, adds and removes levels (size zero removes)', () => {
    const bids = [['10.00', '1.5000'], ['9.95', '0.2500'], ['9.90', '0.0000']];
    book.apply(update(bids, [['10.20', '4.0000']]));
    assert.deepEqual(book.bids(), [['10.00', '1.5000'], ['9.95', '0.2500']]);
    assert.deepEqual(book.asks(), [['10.10', '3.0000'], ['10.20', '4.0000']]);
    assert.equal(book.checksum(), referenceCrc('10.00:1.5000:10.10:3.0000:9.95:0.2500:10.20:4.0000'));
  });

  it('ignores the removal of an absent level', () => {
    const before = book.checksum();
    book.apply(update([['5.00', '0.0000']], []));
    assert.equal(book.checksum(), before);
  });

  it('starts again from a snapshot', () => {
    book.apply(snapshot([['8.00', '1.0000']], []));
    assert.deepEqual(book.bids(), [['8.00', '1.0000']]);
    assert.deepEqual(book.asks(), []);
    assert.equal(book.checksum(), referenceCrc('8.00:1.0000'));
  });

  it('refuses malformed messages and leaves the book unchanged', () => {
    const before = [book.bids(), book.asks()];
    const bad = [
      update([['10.00', 'abc']], []),
      update([['10.00']], []),
      update([[10.0, '1.0']], []),
      update([['NaN', '1.0']], []),
      update([['Infinity', '1.0']], []),
      update([['1e3', '1.0']], []),
      update([['.', '1.0']], []),
      update([['9.00', '1.0']], null),
      { type: 'update', bids: [['9.00', '1.0']] },
      null,
      'update',
    ];
    for (const msg of bad) {
      assert.throws(() => book.apply(msg), BookError, JSON.stringify(msg));
      assert.deepEqual([book.bids(), book.asks()], before);
    }
  });
});
