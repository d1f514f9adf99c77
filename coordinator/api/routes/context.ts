/**
 * What the API's route plugins are handed. server.ts builds the stores, runners and directories once and
 * registers each plugin with this object as its options (`app.register(nodeRoutes, ctx)`), so a plugin reaches
 * nothing through module state: its options type (a Pick of ApiContext) is the full list of what its routes
 * touch, and a test can register one plugin with fakes.
 */
import type { Logger } from '../../../common/log.ts';
import type { AgentHub } from '../../cluster/agent-hub.ts';
import type { GatewayDirectory } from '../../cluster/gateways.ts';
import type { GroupManager } from '../../cluster/groups.ts';
import type { EventBus } from '../../events.ts';
import type { JobRunner } from '../../jobs/runner.ts';
import type { CoordinatorMetrics } from '../../metrics.ts';
import type { ModelRegistry } from '../../registry/registry.ts';
import type { ArtifactStore } from '../../store/artifact-store.ts';
import type { JobRecord, JobStore } from '../../store/job-store.ts';
import type { RunStore } from '../../store/run-store.ts';
import type { StateStore } from '../../store/state-store.ts';
import type { SweepRunner } from '../../tracking/sweeps.ts';
import type { LiveStreams } from '../live-stream.ts';
import type { SessionStore } from '../sessions.ts';
import type { JobSummary, NodeWithRole } from '../views.ts';

export interface ApiContext {
  log: Logger;
  /** This cluster's id, fixed at its first start (GET /healthz). */
  clusterId: string;
  store: StateStore;
  hub: AgentHub;
  groups: GroupManager;
  jobs: JobStore;
  runner: JobRunner;
  runs: RunStore;
  sweeps: SweepRunner;
  registry: ModelRegistry;
  artifacts: ArtifactStore;
  gateways: GatewayDirectory;
  sessions: SessionStore;
  streams: LiveStreams;
  bus: EventBus;
  metrics: CoordinatorMetrics;
  /** Segment size for ring collectives a request does not choose itself (server.ts DEFAULT_SEGMENT_BYTES). */
  segmentBytes: number;
  /** Whether `presented` is the cluster token (compared by its sha256, in constant time). */
  isClusterToken(presented: unknown): boolean;
  nodeViews(): NodeWithRole[];
  jobSummaries(): JobSummary[];
  /** Admits a job spec (routes/jobs.ts jobSubmitter); POST /api/jobs and each sweep trial enter here. */
  submitJob(raw: unknown): JobRecord;
}
