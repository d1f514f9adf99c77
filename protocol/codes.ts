/**
 * WebSocket close codes used on every link. Codes 4000–4999 are ours (RFC 6455 leaves them to applications).
 * Each comment says what the side that closes means by it.
 */
export const CloseCode = {
  /** "I am done with this connection; nothing went wrong." */
  NORMAL: 1000,
  /** "I am shutting down or leaving the cluster." */
  GOING_AWAY: 1001,
  /** "Your frame exceeded my maxPayload." (sent by ws itself before any of our code sees the frame) */
  MESSAGE_TOO_BIG: 1009,
  /** "Too many connections are waiting to say hello to me right now; try again later." (common/conn-limits.ts) */
  TRY_AGAIN: 1013,
  /** "Your protocol major version differs from mine; the reason names both." */
  VERSION_MISMATCH: 4000,
  /** "Your frame is not a msgpack value I can decode (garbage, truncated, trailing bytes, or a text frame)." */
  MALFORMED: 4001,
  /** "Your message's `type` is not one I know." */
  UNKNOWN_TYPE: 4002,
  /** "Your message's fields fail the schema; the reason names the first bad field." */
  INVALID: 4003,
  /** "Your message or its attachment exceeds the size I accept." */
  TOO_LARGE: 4004,
  /** "Your token is wrong, missing or revoked." */
  UNAUTHORIZED: 4005,
  /** "Your message is valid but not allowed now (no hello first, a second hello, an attachment out of sequence)." */
  UNEXPECTED: 4006,
  /** "You did not say hello within the handshake timeout." */
  HELLO_TIMEOUT: 4007,
  /** "I have not heard a heartbeat from you within the timeout; you are marked dead." */
  HEARTBEAT_TIMEOUT: 4008,
  /** "A newer connection has taken over your node identity." */
  REPLACED: 4009,
  /** "An operator revoked your node credential: I will not accept you under this node id again. Do not reconnect." */
  REVOKED: 4010,
  /** "Handling your message failed on my side; my log has the details. Reconnect and retry." */
  INTERNAL: 4011,
} as const;

export type CloseCodeName = keyof typeof CloseCode;
export type CloseCodeValue = (typeof CloseCode)[CloseCodeName];

/** WebSocket close reasons are limited to 123 bytes of UTF-8. */
export function closeReason(text: string): string {
  const buf = Buffer.from(text, 'utf8');
  if (buf.length <= 123) return text;
  return buf.subarray(0, 120).toString('utf8').replace(/\uFFFD+$/, '') + '...';
}
