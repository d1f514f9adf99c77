/**
 * Frame encoding. Every message is one msgpack map with a string `type`. Bulk data (tensors) never goes through
 * msgpack: a message that carries some declares `attach: <bytes>` and the raw bytes follow as the next binary
 * frame on the same connection (see connection.ts), so a 1 MB gradient segment is sent without a copy.
 */
import { Packr } from 'msgpackr';
import { ProtocolError } from './errors.ts';

// Plain maps only: no record extension (its shared structure state would make decoding depend on earlier frames),
// no bundled strings. 64-bit integers (which other msgpack writers use even for small values) decode as numbers
// when they are safe integers, as BigInt otherwise, which the schemas then reject.
const packr = new Packr({ useRecords: false, bundleStrings: false, mapsAsObjects: true, moreTypes: false, int64AsType: 'auto' as 'number' }); // 'auto' is supported at run time, missing from the typings

export interface Envelope {
  type: string;
  [key: string]: unknown;
}

export function encodeMessage(message: Envelope): Buffer {
  return packr.pack(message);
}

/** Decodes one frame into an envelope. Throws PRT_ERR_MALFORMED for anything that is not exactly one msgpack map with a string `type`. */
export function decodeFrame(frame: Uint8Array): Envelope {
  if (frame.byteLength === 0) throw new ProtocolError('PRT_ERR_MALFORMED', 'empty frame');
  let value: unknown;
  try {
    value = packr.unpack(frame);
  } catch (err) {
    throw new ProtocolError('PRT_ERR_MALFORMED', `frame is not valid msgpack (${frame.byteLength} bytes): ${(err as Error).message}`, {
      cause: err,
    });
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value) || ArrayBuffer.isView(value)) {
    throw new ProtocolError('PRT_ERR_MALFORMED', `frame decodes to ${describe(value)}, not a message map`);
  }
  const type = (value as Record<string, unknown>).type;
  if (typeof type !== 'string') {
    throw new ProtocolError('PRT_ERR_MALFORMED', 'message has no string `type` field');
  }
  return value as Envelope;
}

function describe(value: unknown): string {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'an array';
  if (ArrayBuffer.isView(value)) return 'binary data';
  return `a ${typeof value}`;
}
