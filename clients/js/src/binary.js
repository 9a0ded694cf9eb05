// Binary data messages (`/ws?format=binary`; docs/protocol.md, "Binary data messages"):
// trades, quotes and book updates as fixed little-endian fields, decoded here into the very
// object the gateway's JSON message would have parsed to, so that everything after (sequence
// checks, books and their checksums, callbacks) is the same for both formats.

const TRADE = 1;
const QUOTE = 2;
const BOOK_UPDATE = 3;
const FLAG_ET = 1;

/**
 * @typedef {object} Instrument one entry of the `symbols` reply's `instruments`
 * @property {string} symbol
 * @property {number} price_decimals
 * @property {number} size_decimals
 */

/**
 * A mantissa as the gateway writes it: `scale` digits after the point (none for 0).
 * @param {bigint} mantissa
 * @param {number} scale
 */
export function decimal(mantissa, scale) {
  const neg = mantissa < 0n;
  const digits = (neg ? -mantissa : mantissa).toString();
  let out;
  if (scale === 0) out = digits;
  else if (digits.length > scale) out = `${digits.slice(0, -scale)}.${digits.slice(-scale)}`;
  else out = `0.${'0'.repeat(scale - digits.length)}${digits}`;
  return neg ? `-${out}` : out;
}

/**
 * Decodes one binary message into its JSON form, or `null` when it is not one (too short,
 * an unknown type, or a symbol `instruments` does not have).
 * @param {ArrayBuffer | ArrayBufferView} data the binary frame's payload
 * @param {Instrument[]} instruments the `symbols` reply's list, in its order
 * @returns {Record<string, any> | null}
 */
export function decodeBinary(data, instruments) {
  const bytes = ArrayBuffer.isView(data)
    ? new DataView(data.buffer, data.byteOffset, data.byteLength)
    : new DataView(data);
  try {
    let at = 0;
    const u8 = () => bytes.getUint8(at++);
    const u16 = () => { at += 2; return bytes.getUint16(at - 2, true); };
    const u32 = () => { at += 4; return bytes.getUint32(at - 4, true); };
    const u64 = () => { at += 8; return Number(bytes.getBigUint64(at - 8, true)); };
    const i64 = () => { at += 8; return bytes.getBigInt64(at - 8, true); };
    const type = u8();
    const flags = u8();
    const instrument = instruments[u32()];
    if (instrument === undefined || ![TRADE, QUOTE, BOOK_UPDATE].includes(type)) return null;
    const name = instrument.symbol;
    const px = () => decimal(i64(), instrument.price_decimals);
    const qty = () => decimal(i64(), instrument.size_decimals);
    const kind = type === TRADE ? 'trades' : type === QUOTE ? 'quotes' : 'book';
    // Keys in the JSON message's order: ch, seq, ts, et, then the body.
    const msg = { ch: `${kind}.${name}`, seq: u64(), ts: u64() };
    if (flags & FLAG_ET) msg.et = u64();
    if (type === TRADE) {
      msg.id = u64();
      msg.px = px();
      msg.qty = qty();
      msg.side = u8() === 0 ? 'buy' : 'sell';
    } else if (type === QUOTE) {
      msg.bid = px();
      msg.bsz = qty();
      msg.ask = px();
      msg.asz = qty();
    } else {
      const crc = u32();
      const nBids = u16();
      const nAsks = u16();
      const side = (n) => Array.from({ length: n }, () => [px(), qty()]);
      msg.type = 'update';
      msg.bids = side(nBids);
      msg.asks = side(nAsks);
      msg.crc = crc;
    }
    return at === bytes.byteLength ? msg : null;
  } catch {
    return null; // a RangeError: shorter than its fields say
  }
}
