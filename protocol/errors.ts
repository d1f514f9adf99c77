/**
 * Errors raised while reading the wire. Each code maps to the close code the connection is closed with, so the
 * remote side learns why. See README.md § Error codes.
 */
import { CloseCode, type CloseCodeValue } from './codes.ts';

export const ProtocolErrorCodes = {
  /** A frame is not decodable msgpack: garbage, truncated, trailing bytes, or text instead of binary. */
  PRT_ERR_MALFORMED: CloseCode.MALFORMED,
  /** A message names a `type` this side does not know. */
  PRT_ERR_UNKNOWN_TYPE: CloseCode.UNKNOWN_TYPE,
  /** A message fails its schema. */
  PRT_ERR_INVALID: CloseCode.INVALID,
  /** A message or attachment is larger than allowed. */
  PRT_ERR_TOO_LARGE: CloseCode.TOO_LARGE,
  /** A valid message arrived when it is not allowed (before hello, twice, out of sequence). */
  PRT_ERR_UNEXPECTED: CloseCode.UNEXPECTED,
  /** The peer speaks another major protocol version. */
  PRT_ERR_VERSION_MISMATCH: CloseCode.VERSION_MISMATCH,
  /** The peer presented a wrong or missing token. */
  PRT_ERR_UNAUTHORIZED: CloseCode.UNAUTHORIZED,
  /** The peer did not say hello in time. */
  PRT_ERR_HELLO_TIMEOUT: CloseCode.HELLO_TIMEOUT,
  /** The agent claimed a node id whose credential an operator revoked (`coordinator nodes revoke`). */
  PRT_ERR_REVOKED: CloseCode.REVOKED,
} as const satisfies Record<string, CloseCodeValue>;

export type ProtocolErrorCode = keyof typeof ProtocolErrorCodes;

export class ProtocolError extends Error {
  readonly code: ProtocolErrorCode;
  readonly closeCode: CloseCodeValue;

  constructor(code: ProtocolErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProtocolError';
    this.code = code;
    this.closeCode = ProtocolErrorCodes[code];
  }
}
