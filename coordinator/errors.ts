/**
 * Errors the coordinator raises. Each has a stable code, documented in README.md § Error codes (a test checks
 * that), and the HTTP status it maps to when it crosses the API.
 */
import { defineErrors } from '../protocol/define-errors.ts';

export class CoordinatorError extends defineErrors('CRD_ERR_', {
  /** A request lacks the cluster token or presents a wrong one. */
  CRD_ERR_UNAUTHORIZED: { status: 401 },
  /** A request body or parameter is invalid; `details` names each bad field. */
  CRD_ERR_BAD_REQUEST: { status: 400 },
  /** The named node, group or run does not exist. */
  CRD_ERR_NOT_FOUND: { status: 404 },
  /** The request conflicts with the resource's state (e.g. cancelling a finished job). */
  CRD_ERR_CONFLICT: { status: 409 },
  /** Not enough alive agents for what was asked. */
  CRD_ERR_NOT_ENOUGH_NODES: { status: 409 },
  /** A collective run did not finish within its deadline. */
  CRD_ERR_TIMEOUT: { status: 504 },
  /** A group failed to form or a collective failed on some rank. */
  CRD_ERR_GROUP_FAILED: { status: 502 },
  /** The data folder cannot be used (unwritable, corrupt database, artifact checksum mismatch). */
  CRD_ERR_STORAGE: { status: 500 },
  /** A gateway the dashboard asked about did not answer, or answered with something that is not JSON. */
  CRD_ERR_GATEWAY_UNREACHABLE: { status: 502 },
  /** A cookie-authenticated request that changes something lacks `X-Requested-With: meshtrain` (the CSRF guard). */
  CRD_ERR_FORBIDDEN: { status: 403 },
  /** A command-line option is missing or invalid. */
  CRD_ERR_BAD_ARGS: { status: 400 },
  /** A relayed peer link cannot be made: its target agent is not attached (not connected) or did not open its side in time. The dialer retries until its ring's deadline. */
  CRD_ERR_RELAY_UNAVAILABLE: { status: 503 },
  /** A fault of the coordinator itself (a bug, or a start-up check of its own tables); the log has the stack. */
  CRD_ERR_INTERNAL: { status: 500 },
}) {
  declare readonly statusCode: number;
}

export type CoordinatorErrorCode = CoordinatorError['code'];
