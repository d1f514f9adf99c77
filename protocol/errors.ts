/**
 * Errors raised while reading the wire. Each code maps to the close code the connection is closed with, so the
 * remote side learns why. See README.md § Error codes.
 */
import { CloseCode, type CloseCodeValue } from './codes.ts';
import { defineErrors } from './define-errors.ts';

export class ProtocolError extends defineErrors('PRT_ERR_', {
  /** A frame is not decodable msgpack: garbage, truncated, trailing bytes, or text instead of binary. */
  PRT_ERR_MALFORMED: { closeCode: CloseCode.MALFORMED },
  /** A message names a `type` this side does not know. */
  PRT_ERR_UNKNOWN_TYPE: { closeCode: CloseCode.UNKNOWN_TYPE },
  /** A message fails its schema. */
  PRT_ERR_INVALID: { closeCode: CloseCode.INVALID },
  /** A message or attachment is larger than allowed. */
  PRT_ERR_TOO_LARGE: { closeCode: CloseCode.TOO_LARGE },
  /** A valid message arrived when it is not allowed (before hello, twice, out of sequence). */
  PRT_ERR_UNEXPECTED: { closeCode: CloseCode.UNEXPECTED },
  /** The peer speaks another major protocol version. */
  PRT_ERR_VERSION_MISMATCH: { closeCode: CloseCode.VERSION_MISMATCH },
  /** The peer presented a wrong or missing token. */
  PRT_ERR_UNAUTHORIZED: { closeCode: CloseCode.UNAUTHORIZED },
  /** The peer did not say hello in time. */
  PRT_ERR_HELLO_TIMEOUT: { closeCode: CloseCode.HELLO_TIMEOUT },
  /** The agent claimed a node id whose credential an operator revoked (`coordinator nodes revoke`). */
  PRT_ERR_REVOKED: { closeCode: CloseCode.REVOKED },
}) {
  declare readonly closeCode: CloseCodeValue;
}

export type ProtocolErrorCode = ProtocolError['code'];

/** Each code's close code, read off the table above. */
export const ProtocolErrorCodes = Object.freeze(
  Object.fromEntries(Object.entries(ProtocolError.codes).map(([code, spec]) => [code, spec.closeCode])),
) as { readonly [C in ProtocolErrorCode]: (typeof ProtocolError.codes)[C]['closeCode'] };
