/**
 * Errors the node agent raises. Codes are stable (scripts may match on them) and documented in README.md § Error
 * codes; a test checks that every code here is documented.
 */
import { defineErrors } from '../protocol/define-errors.ts';

export class AgentError extends defineErrors('AGT_ERR_', {
  /** The coordinator refused our join token. Fix --token (printed by `coordinator start`). */
  AGT_ERR_UNAUTHORIZED: { summary: 'the coordinator refused the join token' },
  /** An operator revoked this agent's node credential (`coordinator nodes revoke`); it must not reconnect under it. */
  AGT_ERR_REVOKED: { summary: "the coordinator revoked this agent's credential" },
  /** The coordinator speaks another protocol major version. */
  AGT_ERR_VERSION_MISMATCH: { summary: 'protocol version mismatch with the coordinator' },
  /** The coordinator could not be reached within --max-retries attempts. */
  AGT_ERR_UNREACHABLE: { summary: 'coordinator unreachable' },
  /** A command-line argument is missing or invalid. */
  AGT_ERR_BAD_ARGS: { summary: 'invalid command-line arguments' },
  /** A collective made no progress within its deadline (a peer is gone or stuck). */
  AGT_ERR_COLLECTIVE_TIMEOUT: { summary: 'collective timed out' },
  /** A peer link closed while a collective needed it. */
  AGT_ERR_LINK_CLOSED: { summary: 'peer link closed' },
  /** A peer refused our link (wrong group token, unknown group, or version mismatch). */
  AGT_ERR_PEER_REFUSED: { summary: 'peer refused the link' },
  /** A collective was asked of a group this agent is not in, or while another runs; or a job's rings do not match its layout. */
  AGT_ERR_GROUP: { summary: 'group error' },
  /** An artifact could not be downloaded or uploaded intact (after retries). */
  AGT_ERR_ARTIFACT: { summary: 'artifact transfer failed' },
  /** The compute backend could not start. */
  AGT_ERR_BACKEND: { summary: 'compute backend failed' },
  /** This agent's relay endpoint (it relays for a group: agent-relay.ts) refused a link: no relay ticket, a wrong one, or an unknown session key (HTTP 401). */
  AGT_ERR_RELAY_REFUSED: { status: 401, summary: 'the agent relay refused a link' },
  /** This agent's relay endpoint could not make a relayed link (HTTP 503): its control connection is down, or the target did not call back within 5 s; the dialer retries until its ring's deadline. */
  AGT_ERR_RELAY_UNAVAILABLE: { status: 503, summary: 'the agent relay could not make a link' },
  /** A peer did not finish the link handshake in time, or closed the link during it; retried until the ring's deadline. Check that its peer address is reachable from here. */
  AGT_ERR_PEER_UNREACHABLE: { summary: 'peer link handshake failed' },
  /** The job's spec or plan is invalid or inconsistent (the message says how). Fix the job spec; found at job.start, the job fails at once, without a retry. */
  AGT_ERR_JOB_SPEC: { summary: 'invalid job spec or plan' },
  /** The job's data or models do not fit its model: vocabulary, token ids, the LoRA base, dpo's reference or distill's teacher (the message names it). Fix the job's data or model versions. */
  AGT_ERR_JOB_INPUT: { summary: "the job's inputs do not fit its model" },
  /** The training loss became NaN or infinite. Lower training.lr or raise warmupSteps; the job fails without a retry. */
  AGT_ERR_DIVERGED: { summary: 'the loss diverged' },
  /** The checkpoint to resume from does not fit this rank (step, model, shard or tensor shapes, or its manifest is missing). The attempt fails; the coordinator chose that checkpoint, so report it if it persists. */
  AGT_ERR_RESUME: { summary: 'unusable resume checkpoint' },
  /** A trainer thread (compute worker or checkpoint encoder) crashed, exited, broke its message protocol, or failed without a code of its own; the message says which. The attempt fails and the coordinator retries it; the agent log has the detail. */
  AGT_ERR_TRAINER: { summary: 'trainer thread failed' },
  /** The job was stopped: job.stop, a lost control connection, or its group released. Nothing to fix: the coordinator decides what runs next. */
  AGT_ERR_STOPPED: { summary: 'job stopped' },
  /** An argument of a collective, a mailbox or the pipeline schedule is out of its range (a ring size, a rank, a tag, a tensor over the frame limit): a bug in the caller, thrown as a RangeError carrying this code, as Node's own ERR_OUT_OF_RANGE is. */
  AGT_ERR_OUT_OF_RANGE: { summary: 'argument out of range' },
}) {}

export type AgentErrorCode = AgentError['code'];

/** A RangeError with AGT_ERR_OUT_OF_RANGE as its code: what the data plane and the schedule throw on a bad argument. */
export function outOfRange(message: string): RangeError & { code: 'AGT_ERR_OUT_OF_RANGE' } {
  return Object.assign(new RangeError(message), { code: 'AGT_ERR_OUT_OF_RANGE' as const });
}
