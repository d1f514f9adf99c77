/**
 * Errors the node agent raises. Codes are stable (scripts may match on them) and documented in README.md § Error
 * codes; a test checks that every code here is documented.
 */
export const AgentErrorCodes = {
  /** The coordinator refused our join token. Fix --token (printed by `coordinator start`). */
  AGT_ERR_UNAUTHORIZED: 'the coordinator refused the join token',
  /** An operator revoked this agent's node credential (`coordinator nodes revoke`); it must not reconnect under it. */
  AGT_ERR_REVOKED: "the coordinator revoked this agent's credential",
  /** The coordinator speaks another protocol major version. */
  AGT_ERR_VERSION_MISMATCH: 'protocol version mismatch with the coordinator',
  /** The coordinator could not be reached within --max-retries attempts. */
  AGT_ERR_UNREACHABLE: 'coordinator unreachable',
  /** A command-line argument is missing or invalid. */
  AGT_ERR_BAD_ARGS: 'invalid command-line arguments',
  /** A collective made no progress within its deadline (a peer is gone or stuck). */
  AGT_ERR_COLLECTIVE_TIMEOUT: 'collective timed out',
  /** A peer link closed while a collective needed it. */
  AGT_ERR_LINK_CLOSED: 'peer link closed',
  /** A peer refused our link (wrong group token, unknown group, or version mismatch). */
  AGT_ERR_PEER_REFUSED: 'peer refused the link',
  /** A collective was asked of a group this agent is not in, or while another runs. */
  AGT_ERR_GROUP: 'group error',
  /** An artifact could not be downloaded or uploaded intact (after retries). */
  AGT_ERR_ARTIFACT: 'artifact transfer failed',
  /** The compute backend could not start. */
  AGT_ERR_BACKEND: 'compute backend failed',
} as const;

export type AgentErrorCode = keyof typeof AgentErrorCodes;

export class AgentError extends Error {
  readonly code: AgentErrorCode;
  constructor(code: AgentErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'AgentError';
    this.code = code;
  }
}
