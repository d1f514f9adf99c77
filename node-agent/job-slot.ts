/**
 * The one training job an agent runs at a time: job.start runs it (trainer/job-runner.ts) on its group's rings;
 * job.stop, a released group, a lost control connection or the agent leaving stop it. A second job.start while one
 * runs is refused with a job.finished saying why; one that comes while the previous attempt is still stopping
 * waits for that first (it takes milliseconds).
 *
 * Split from agent.ts, which keeps the control connection, the groups and the collectives; the agent hands this
 * slot each job message and asks it what runs.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Logger } from '../common/log.ts';
import { fetchTrusting } from '../common/tls.ts';
import type { StepObserver } from '../common/step-report.ts';
import type { AgentMessage, JobStart } from '../protocol/control.ts';
import type { BackendChoice } from '../model/compute/backend.ts';
import { ArtifactClient } from './artifact-client.ts';
import { collectGarbage } from './collect-garbage.ts';
import type { Group } from './group.ts';
import { jobLinks, runJob } from './trainer/job-runner.ts';

/** What the slot needs of the agent's configuration (agent.ts's AgentConfig has all of it). */
export interface JobSlotConfig {
  /** ws(s):// URL of the coordinator's agent endpoint: its artifact API is at the same origin over http(s). */
  url: string;
  token: string;
  name: string;
  /** CAs trusted for a wss:// coordinator and its artifact API. */
  ca?: readonly string[];
  /** Compute backend for training jobs (default auto). */
  backend?: BackendChoice;
  /** Where jobs keep their data, checkpoints and the artifact cache (default <tmpdir>/meshtrain-agent-<name>). */
  workDir?: string;
  /** Told about every step and checkpoint. */
  observers?: readonly StepObserver[];
  log: Logger;
}

export class JobSlot {
  readonly #cfg: JobSlotConfig;
  readonly #log: Logger;
  /** To the coordinator over the control connection of the moment; dropped while there is none. */
  readonly #send: (msg: AgentMessage) => void;
  #job: { jobId: string; groupId: string; stop: AbortController; done: Promise<unknown> } | null = null;
  #artifacts: ArtifactClient | null = null;

  constructor(cfg: JobSlotConfig, send: (msg: AgentMessage) => void) {
    this.#cfg = cfg;
    this.#log = cfg.log;
    this.#send = send;
  }

  /** The job running (or stopping), if any. */
  get jobId(): string | null {
    return this.#job?.jobId ?? null;
  }

  get groupId(): string | null {
    return this.#job?.groupId ?? null;
  }

  /** Settles when the job running now has sent its job.finished (null: none runs). */
  get done(): Promise<unknown> | null {
    return this.#job?.done ?? null;
  }

  /**
   * Runs a training job on its group's rings; one job at a time. `groupOf` finds the group by id (looked up once any
   * previous attempt has stopped); `reply` answers on the connection that carried job.start, if it is still open.
   */
  async start(start: JobStart, groupOf: (id: string) => Group | undefined, reply: (msg: AgentMessage) => void): Promise<void> {
    const refuse = (error: string) => {
      this.#log.warn(`job ${start.jobId}: ${error}`);
      reply({ type: 'job.finished', jobId: start.jobId, attempt: start.attempt, rank: start.rank, ok: false, step: start.resume?.step ?? 0, error });
    };
    // A job being stopped (its attempt ended: a peer died, a re-plan) is on its way out; the coordinator may
    // already be starting the next attempt here. Let the old one finish stopping first (it takes milliseconds).
    const stopping = this.#job;
    if (stopping?.stop.signal.aborted) await Promise.race([stopping.done, new Promise((r) => setTimeout(r, 10_000))]);
    if (this.#job) return refuse(`this agent is already running job ${this.#job.jobId}`);
    const group = groupOf(start.groupId);
    if (!group) return refuse(`this agent is not a member of group ${start.groupId}: send group.assign before job.start`);
    try {
      group.ringOf(); // every job has a linked world ring; its other rings are looked up by name (jobLinks)
    } catch (err) {
      return refuse(`${(err as Error).message}: a job starts once every rank of its group has sent group.ready`);
    }
    const workDir = this.#cfg.workDir ?? join(tmpdir(), `meshtrain-agent-${this.#cfg.name.replace(/[^A-Za-z0-9_.-]/g, '_')}`);
    this.#artifacts ??= new ArtifactClient({ baseUrl: httpBaseUrl(this.#cfg.url), token: this.#cfg.token, cacheDir: join(workDir, 'artifacts'), fetch: fetchTrusting(this.#cfg.ca) });
    const stop = new AbortController();
    const done = runJob(start, {
      links: (placement) => jobLinks(group, placement),
      artifacts: this.#artifacts,
      send: this.#send,
      log: this.#log.child(`job ${start.jobId}`),
      backend: this.#cfg.backend ?? 'auto',
      signal: stop.signal,
      workDir: join(workDir, 'jobs'),
      ...(this.#cfg.observers ? { observers: this.#cfg.observers } : {}),
    }).finally(() => {
      if (this.#job?.stop === stop) this.#job = null;
      collectGarbage(); // the attempt's shared buffers, before another attempt allocates its own (collect-garbage.ts)
    });
    this.#job = { jobId: start.jobId, groupId: start.groupId, stop, done };
  }

  /** Stops the job running now, if any and not already stopping; `reason` goes into its job.finished. */
  stop(reason: string): void {
    const job = this.#job;
    if (job && !job.stop.signal.aborted) {
      this.#log.info(`stopping job ${job.jobId}: ${reason}`);
      job.stop.abort(reason);
    }
  }
}

/** http(s)://host:port of the coordinator whose agent endpoint is the ws(s):// `url`. */
export function httpBaseUrl(url: string): string {
  const u = new URL(url);
  u.protocol = u.protocol === 'wss:' ? 'https:' : 'http:';
  return u.origin;
}
