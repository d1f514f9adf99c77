/**
 * One attempt of a job: a start of it on a set of agents, and what the coordinator knows about it until it ends
 * (the agents' progress, shard checkpoints and their merges, evaluation). The runner (runner.ts) owns these records
 * and is the only one to end an attempt; the modules beside it (launch.ts, checkpoint-intake.ts, completion.ts)
 * work on an attempt through `RunnerContext`: the stores and services, the clock and bus, and the few transitions
 * the runner makes for them. The hub and group manager are narrowed to what the runner uses, so a unit test hands
 * it small fakes (test/coordinator/job-runner.test.ts).
 */
import type { BackendChoice } from '../../protocol/backends.ts';
import type { AgentMessage, JobProgress } from '../../protocol/control.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { Logger } from '../../common/log.ts';
import type { AttemptSpan } from '../../common/tracing.ts';
import type { AgentHub } from '../cluster/agent-hub.ts';
import type { GroupManager } from '../cluster/groups.ts';
import type { EventBus } from '../events.ts';
import type { ModelRegistry } from '../registry/registry.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import type { JobState, JobStore } from '../store/job-store.ts';
import type { RunStore } from '../store/run-store.ts';
import type { CheckpointSharder, FileSet } from './checkpoint-shards.ts';
import type { Candidate } from './planner.ts';
import type { AttemptTelemetry } from './telemetry.ts';

export interface Attempt {
  jobId: string;
  attempt: number;
  groupId: string | null;
  nodeIds: string[];
  /** The planner's step time for this attempt, its agents' speedKeys and the refits it was predicted with. */
  predictedStepMs: number;
  refitBase: Map<string, number>;
  /** The last REFIT_WINDOW step times after the first (which pays for warm-up), and whether the first came. */
  stepTimes: number[];
  warmedUp: boolean;
  layout: ParallelLayout;
  stages: Array<[number, number]>;
  microBatches: number;
  /** When an agent last reported anything (progress, a rank report, a checkpoint), or job.start went out. */
  lastActivityMs: number;
  data: FileSet | null; // the prepared dataset's files (tokenizer.json among them)
  finished: Map<number, Extract<AgentMessage, { type: 'job.finished' }>>;
  lastProgress: JobProgress | null;
  lastEvalLoss: number | null;
  stopping: boolean;
  /** Shard checkpoints received, by step, keyed "stage.tp", until every shard of the step is in. */
  shards: Map<number, Map<string, FileSet>>;
  /** The canonical (merged) checkpoint of each step, once every shard of it arrived. */
  merged: Map<number, Promise<FileSet>>;
  /** Every rank's own step reports, once the group is formed (rank → node known). */
  telemetry: AttemptTelemetry | null;
  /** The attempt's trace span (a no-op unless tracing is on). */
  span: AttemptSpan;
  /** Set when early stopping decided to end the job at this step: its merged checkpoint becomes the version. */
  earlyStopAt?: number;
  /** A periodic evaluation suite (eval.every) is running: the next one waits for it rather than piling up. */
  evaluating?: boolean;
}

/** A new attempt of `jobId` as the scheduler chose it, nothing reported yet. */
export function newAttempt(jobId: string, attempt: number, chosen: Candidate, refitBase: Map<string, number>, span: AttemptSpan, nowMs: number): Attempt {
  return {
    jobId, attempt, groupId: null, nodeIds: chosen.placement, layout: chosen.layout, stages: chosen.stages, microBatches: chosen.microBatches,
    lastActivityMs: nowMs, predictedStepMs: chosen.predicted.stepMs, stepTimes: [], warmedUp: false, refitBase,
    data: null, finished: new Map(), lastProgress: null, lastEvalLoss: null,
    stopping: false, shards: new Map(), merged: new Map(), telemetry: null, span,
  };
}

/** The agent hub as the runner uses it (AgentHub in the coordinator). */
export type RunnerHub = Pick<AgentHub, 'onAgentMessage' | 'onNodeDown' | 'availableNodes' | 'isConnected' | 'send' | 'views'>;

/** The group manager as the runner uses it (GroupManager in the coordinator). */
export type RunnerGroups = Pick<GroupManager, 'form' | 'release'>;

/** The stores and services a runner is built on (JobRunnerOptions adds its timing; RunnerContext its clock and transitions). */
export interface RunnerServices {
  jobs: JobStore;
  hub: RunnerHub;
  groups: RunnerGroups;
  artifacts: ArtifactStore;
  registry: ModelRegistry;
  /** Where each run's dataset is recorded for experiment tracking (and read back into the model's lineage). */
  runs?: RunStore;
  dataDir: string;
  segmentBytes: number;
  log: Logger;
  /** What the evaluation suites compute on (default cpu). */
  backend?: BackendChoice;
}

/** What the modules beside the runner work with; the functions at the end are the runner's own transitions. */
export interface RunnerContext extends RunnerServices {
  bus: EventBus;
  now: () => number;
  sharder: CheckpointSharder;
  /** Records the job's state and announces it on the bus. */
  setState(jobId: string, state: JobState, reason: string): void;
  /** Whether `attempt` is still its job's running attempt (messages and merges of an older one are stale). */
  isCurrent(attempt: Attempt): boolean;
  /** The attempts running now (their datasets are in use). */
  running(): Iterable<Attempt>;
  /** Ends the attempt with its job in `state` (succeeded: its group is released; otherwise its agents are stopped). */
  endAttempt(attempt: Attempt, state: 'queued' | 'failed' | 'succeeded', reason: string): void;
  /** Ends it through no fault of the job's own: queued to resume, unless it keeps failing (restarts.ts). */
  attemptFailed(attempt: Attempt, why: string): void;
  /** Stops it and queues its job to resume from its newest checkpoint at once (a reshape). */
  requeue(attempt: Attempt, reason: string): void;
}
