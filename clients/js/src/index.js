/**
 * tickfan-client: a client for the tickfan market-data gateway (wire protocol v2).
 *
 * ```js
 * import { Client } from 'tickfan-client';
 * const client = new Client('ws://127.0.0.1:8080/ws', ['trades.BTC-USD', 'book.BTC-USD'], {
 *   onMessage: (msg) => console.log(msg),
 * });
 * await client.run(); // until client.close()
 * ```
 *
 * @module tickfan-client
 */

export { decimal, decodeBinary } from './binary.js';
export { BookError, CHECKSUM_DEPTH, OrderBook, checksum, crc32 } from './book.js';
export { COUNTER_NAMES, Client, Gap, PROTOCOL_VERSION, SubscribeError, withVersion } from './client.js';
