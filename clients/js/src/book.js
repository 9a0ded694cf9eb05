/**
 * An L2 order book as a client keeps it from `book.<SYM>` messages, and its checksum.
 *
 * Prices and sizes stay the exact decimal strings of the wire (the checksum is computed over
 * them); levels are ordered numerically by comparing the decimal strings digit by digit, never
 * through floats. See `docs/protocol.md`, "Order books" and "Book checksum".
 *
 * @module tickfan-client/book
 */

/** Levels per side that the checksum covers. */
export const CHECKSUM_DEPTH = 10;

/**
 * A level as the wire writes it: `[price, size]`, both decimal strings.
 * @typedef {readonly [string, string]} Level
 */

/** A book message that cannot be applied (missing sides, malformed levels or numbers). */
export class BookError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.name = 'BookError';
  }
}

/** A plain decimal: optional sign, digits, optional fraction (`64123.50`, `0.0000`, `-1`, `.5`). */
const DECIMAL = /^([+-]?)(\d*)(?:\.(\d*))?$/;

/**
 * A decimal number in a canonical form, so that equal values have equal keys and can be
 * compared without floats.
 * @typedef {{negative: boolean, int: string, frac: string, key: string}} Decimal
 */

/**
 * Parses a decimal string of the wire.
 * @param {unknown} text
 * @returns {Decimal} with leading zeros of the integer part and trailing zeros of the fraction
 *   removed (zero is never negative)
 * @throws {BookError} when `text` is not a string holding a plain decimal number
 */
export function parseDecimal(text) {
  const match = typeof text === 'string' ? DECIMAL.exec(text) : null;
  if (match === null || (match[2] === '' && !match[3])) {
    throw new BookError(`not a decimal string: ${JSON.stringify(text) ?? String(text)}`);
  }
  const int = match[2].replace(/^0+/, '');
  const frac = (match[3] ?? '').replace(/0+$/, '');
  const negative = match[1] === '-' && (int !== '' || frac !== '');
  return { negative, int, frac, key: `${negative ? '-' : ''}${int || '0'}.${frac}` };
}

/**
 * Compares two parsed decimals: negative, zero or positive as `a` is less than, equal to or
 * greater than `b`.
 * @param {Decimal} a
 * @param {Decimal} b
 * @returns {number}
 */
export function compareDecimals(a, b) {
  if (a.negative !== b.negative) return a.negative ? -1 : 1;
  const sign = a.negative ? -1 : 1;
  if (a.int.length !== b.int.length) return sign * (a.int.length - b.int.length);
  if (a.int !== b.int) return sign * (a.int < b.int ? -1 : 1);
  // Without trailing zeros, fractions compare as strings: "5" < "51" and "05" < "5".
  if (a.frac !== b.frac) return sign * (a.frac < b.frac ? -1 : 1);
  return 0;
}

/** zlib's CRC-32 table (ISO-HDLC, reflected polynomial 0xEDB88320). */
const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

const UTF8 = new TextEncoder();

/**
 * CRC-32 as zlib, gzip and PNG compute it.
 * @param {string | Uint8Array} data a string is taken as its UTF-8 bytes
 * @returns {number} an unsigned 32-bit integer
 */
export function crc32(data) {
  const bytes = typeof data === 'string' ? UTF8.encode(data) : data;
  let crc = 0xffffffff;
  for (const byte of bytes) crc = CRC_TABLE[(crc ^ byte) & 0xff] ^ (crc >>> 8);
  return (crc ^ 0xffffffff) >>> 0;
}

/**
 * The protocol's checksum of a book whose sides are given best first.
 *
 * The best 10 bids and 10 asks are interleaved (bid 1, ask 1, bid 2, ask 2, ...; a shorter side
 * just stops contributing), each written `price:size` with the wire's strings, all joined with
 * `:`; the result is zlib's CRC-32 of that ASCII string (0 for an empty book).
 * @param {Iterable<Level>} bids
 * @param {Iterable<Level>} asks
 * @returns {number}
 */
export function checksum(bids, asks) {
  const topBids = [...bids].slice(0, CHECKSUM_DEPTH);
  const topAsks = [...asks].slice(0, CHECKSUM_DEPTH);
  const parts = [];
  for (let i = 0; i < CHECKSUM_DEPTH; i++) {
    for (const side of [topBids, topAsks]) {
      if (i < side.length) parts.push(side[i][0], side[i][1]);
    }
  }
  return crc32(parts.join(':'));
}

/**
 * One side's levels, keyed by the canonical price.
 * @typedef {Map<string, {price: Decimal, level: Level}>} Side
 */

/** Both sides of one book, keyed by numeric price, keeping the wire strings. */
export class OrderBook {
  /** @type {Side} */
  #bids = new Map();
  /** @type {Side} */
  #asks = new Map();

  /**
   * Applies a `snapshot` (replacing everything) or an `update` message.
   *
   * In an update a level sets its price's size, or removes the price when the size is zero.
   * @param {object} msg a book message as parsed from the wire
   * @throws {BookError} on a malformed message; the book is then unchanged
   */
  apply(msg) {
    if (msg === null || typeof msg !== 'object') throw new BookError('not a message object');
    const changes = [parseSide(msg, 'bids'), parseSide(msg, 'asks')];
    if (msg.type === 'snapshot') {
      this.#bids.clear();
      this.#asks.clear();
    }
    [this.#bids, this.#asks].forEach((side, i) => {
      for (const { price, level, remove } of changes[i]) {
        if (remove) side.delete(price.key);
        else side.set(price.key, { price, level });
      }
    });
  }

  /**
   * Bids, best (highest) first.
   * @param {number} [depth] only the best `depth` of them
   * @returns {Level[]}
   */
  bids(depth) {
    return sorted(this.#bids, -1).slice(0, depth);
  }

  /**
   * Asks, best (lowest) first.
   * @param {number} [depth] only the best `depth` of them
   * @returns {Level[]}
   */
  asks(depth) {
    return sorted(this.#asks, 1).slice(0, depth);
  }

  /** @returns {Level | null} the highest bid, or null when there are no bids */
  bestBid() {
    return best(this.#bids, -1);
  }

  /** @returns {Level | null} the lowest ask, or null when there are no asks */
  bestAsk() {
    return best(this.#asks, 1);
  }

  /**
   * @returns {number} this book's checksum (see {@link checksum}), to compare with a
   *   message's `crc`
   */
  checksum() {
    return checksum(this.bids(CHECKSUM_DEPTH), this.asks(CHECKSUM_DEPTH));
  }

  /** The number of levels, both sides together. */
  get size() {
    return this.#bids.size + this.#asks.size;
  }

  toString() {
    const [bids, asks] = [this.bids(3), this.asks(3)].map((levels) => JSON.stringify(levels));
    return `OrderBook(bids=${bids}..., asks=${asks}...)`;
  }
}

/**
 * The levels of `msg[side]`, validated.
 * @param {Record<string, unknown>} msg
 * @param {'bids' | 'asks'} side
 * @returns {{price: Decimal, level: Level, remove: boolean}[]}
 */
function parseSide(msg, side) {
  const levels = msg[side];
  if (!Array.isArray(levels)) throw new BookError(`${side} is not a list`);
  return levels.map((level) => {
    if (!Array.isArray(level) || level.length !== 2) {
      throw new BookError(`bad level in ${side}: ${JSON.stringify(level)}`);
    }
    const [px, qty] = level;
    const size = parseDecimal(qty);
    const price = parseDecimal(px);
    return { price, level: Object.freeze([px, qty]), remove: size.int === '' && size.frac === '' };
  });
}

/**
 * A side's levels in order: `direction` 1 for ascending prices, -1 for descending.
 * @param {Side} side
 * @param {1 | -1} direction
 * @returns {Level[]}
 */
function sorted(side, direction) {
  return [...side.values()]
    .sort((a, b) => direction * compareDecimals(a.price, b.price))
    .map((entry) => entry.level);
}

/**
 * A side's first level in `direction`'s order, without sorting.
 * @param {Side} side
 * @param {1 | -1} direction
 * @returns {Level | null}
 */
function best(side, direction) {
  let top = null;
  for (const entry of side.values()) {
    if (top === null || direction * compareDecimals(entry.price, top.price) < 0) top = entry;
  }
  return top === null ? null : top.level;
}
