/**
 * The control channel: agent ⇄ coordinator over one WebSocket the agent opens (so agents behind NAT can join).
 * Sequence: agent `hello` → coordinator `welcome` (or a close with UNAUTHORIZED / VERSION_MISMATCH), then
 * heartbeats both ways, assignments from the coordinator, results and metrics from the agent, `leave` on shutdown.
 */
import { Type } from '@sinclair/typebox';
import { Attach, Count, Id, Secret, Text, message, messageParser, type MessageOf } from './schema.ts';
import { JobSpec } from './job-spec.ts';
import { RingId, WORLD_RING } from './peer.ts';

/** A content address in the coordinator's artifact store (GET/PUT /api/artifacts/:sha256). */
const Sha256 = Type.String({ pattern: '^[0-9a-f]{64}$' });
/** Files by name, each a content address: a checkpoint or a model version. */
const FileName = Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$' });
// additionalProperties: false is what makes the key pattern bind: without it TypeBox's Record lets any other key
// through (e.g. '../../etc/x', which would then name a file on disk).
const FileSet = Type.Record(FileName, Sha256, { maxProperties: 64, additionalProperties: false });
/** A prepared dataset: its folder's files (model/prepare-data.ts layout) by name. */
const DataFiles = Type.Record(FileName, Sha256, { maxProperties: 100_000, additionalProperties: false });

/** Largest result attachment an agent may send the coordinator (a collective's result vector, for checking). */
export const MAX_CONTROL_ATTACHMENT = 16 * 1024 * 1024;
/** ws maxPayload on the control channel: the attachment plus slack for headers. */
export const MAX_CONTROL_FRAME = MAX_CONTROL_ATTACHMENT + 64 * 1024;

export const Capabilities = Type.Object(
  {
    backend: Text(32), // compute backend the agent runs: wasm, cpu, tensorflow (tfjs-node), ...
    cores: Type.Integer({ minimum: 1, maximum: 65536 }),
    memoryBytes: Type.Number({ minimum: 0 }),
    freeMemoryBytes: Type.Number({ minimum: 0 }),
    matmulGflops: Type.Number({ minimum: 0, maximum: 1e7 }), // measured on join, float32
    platform: Text(64),
    nodeVersion: Text(32),
    /** Median ms of each protocol/probe.ts shape's forward and backward on this agent's backend, measured at join. */
    probeMs: Type.Optional(Type.Array(Type.Number({ minimum: 0, maximum: 1e7 }), { maxItems: 8 })),
    /** On webgpu: the adapter the agent computes on (model/compute/webgpu.ts GpuInfo). */
    gpu: Type.Optional(Type.Object(
      {
        vendor: Text(128),
        architecture: Text(128),
        description: Text(256),
        dawnBackend: Text(32), // vulkan, metal, d3d12, opengl
        software: Type.Boolean(), // llvmpipe, SwiftShader: a CPU pretending
        maxBufferSize: Type.Number({ minimum: 0 }),
        maxStorageBufferBindingSize: Type.Number({ minimum: 0 }), // the largest tensor one kernel can bind
      },
      { additionalProperties: false },
    )),
  },
  { additionalProperties: false },
);

export const PeerInfo = Type.Object(
  {
    rank: Count(65535),
    nodeId: Id,
    address: Text(256),
    /**
     * Present when nobody can dial this peer (behind NAT, --relay-only): dial the coordinator's relay instead
     * (`/ws/relay?to=<nodeId>` on the URL the agent joined through) with `Authorization: Bearer <ticket>`. The
     * ticket is the group's and lets its members through the relay to its relayed members only; the link's own
     * `peer.hello` (the group token) still goes end to end. With `url`, the relay is an agent of the group that can
     * be dialled (its peer port's /ws/relay, chosen by the coordinator: groups.ts) rather than the coordinator.
     */
    relay: Type.Optional(Type.Object({ ticket: Secret, url: Type.Optional(Text(256)) }, { additionalProperties: false })),
  },
  { additionalProperties: false },
);

/** Most rings one group may have (e.g. data × pipeline × tensor replicas of a large job). */
export const MAX_RINGS = 4096;

/**
 * One ring of a group: `members` are group ranks in ring order (each dials the next, the last dials the first).
 * The schema checks the shape and that members are distinct; `ringProblems` checks what needs the group's size.
 */
export const RingSpec = Type.Object(
  { id: RingId, members: Type.Array(Count(65535), { minItems: 1, maxItems: 65535, uniqueItems: true }) },
  { additionalProperties: false },
);

export const COLLECTIVE_OPS = ['allreduce', 'allgather', 'reducescatter', 'broadcast', 'stream', 'p2p', 'barrier'] as const;
export type CollectiveOp = (typeof COLLECTIVE_OPS)[number];

export const agentMessages = {
  /** First message on the channel. `nodeId` + `nodeSecret` reclaim an identity the coordinator issued before. */
  hello: message('hello', {
    protocol: Text(16),
    token: Secret,
    name: Type.String({ minLength: 1, maxLength: 64 }),
    nodeId: Type.Optional(Id),
    nodeSecret: Type.Optional(Secret),
    capabilities: Capabilities,
    peerAddress: Text(256), // ws://host:port the agent's peer listener accepts links on
    agentVersion: Text(32),
    /**
     * A random key of this agent process: its peer port answers a `peer.probe` challenge with
     * HMAC-SHA256(reachKey, challenge), which proves to the coordinator that `peerAddress` reaches this agent and
     * not another (a stale or wrong address). Absent: the coordinator cannot check, and assumes it is reachable.
     */
    reachKey: Type.Optional(Secret),
    /** false: "nobody can dial me (--relay-only, behind NAT): do not try; relay my links." Absent: check. */
    inbound: Type.Optional(Type.Boolean()),
  }),
  /**
   * "A dialer waits at my relay (I am this group's agent relay) for `to`: send it `relay.open` naming my relay URL,
   * with this session and key." The coordinator checks that this agent relays for `to` in group `groupId`.
   */
  'relay.request': message('relay.request', { groupId: Id, to: Id, session: Id, key: Secret }),
  /** "What my relay has carried so far, per relayed node" (cumulative), sent with heartbeats while it relays. */
  'relay.stats': message('relay.stats', {
    links: Type.Array(
      Type.Object(
        {
          nodeId: Id,
          bytesToNode: Count(2 ** 52),
          bytesFromNode: Count(2 ** 52),
          linksOpen: Count(2 ** 31),
          linksTotal: Count(2 ** 31),
          // ping round trips of a link's two legs and their sum (ms); absent until measured
          dialerLegRttMs: Type.Optional(Type.Number({ minimum: 0 })),
          nodeLegRttMs: Type.Optional(Type.Number({ minimum: 0 })),
          relayedRttMs: Type.Optional(Type.Number({ minimum: 0 })),
        },
        { additionalProperties: false },
      ),
      { maxItems: 4096 },
    ),
  }),
  /** "I am alive." Sent every heartbeatMs; `seq` increases by one each time. */
  heartbeat: message('heartbeat', { seq: Count(2 ** 52), sentAt: Type.Number() }),
  /** "I am leaving on purpose; do not wait for me." */
  leave: message('leave', { reason: Text(256) }),
  /** "My links for this group are up; I am ready to run collectives." */
  'group.ready': message('group.ready', { groupId: Id, rank: Count(65535) }),
  /** "I could not join this group", with why. */
  'group.failed': message('group.failed', { groupId: Id, rank: Count(65535), error: Text(1024) }),
  /** The outcome of one collective run on this rank. `ms` has one entry per timed repeat. */
  'collective.result': message('collective.result', {
    groupId: Id,
    runId: Id,
    rank: Count(65535),
    ok: Type.Boolean(),
    error: Type.Optional(Text(1024)),
    ms: Type.Array(Type.Number({ minimum: 0 }), { maxItems: 1000 }),
    bytes: Count(2 ** 40), // bytes this rank's buffer holds
    digest: Text(64), // sha256 (hex) of the result buffer, equal on every rank after an all-reduce
    maxAbsErr: Type.Optional(Type.Number()), // against the serial sum, when the run asked to verify
    attach: Type.Optional(Attach(MAX_CONTROL_ATTACHMENT)), // the result vector, when the run asked for it
  }),
  /**
   * "Step `step` of this job attempt is done": rank 0 reports the global figures (all-reduced loss). With
   * training.diloco the replicas exchange nothing between synchronisations, so loss and tokensPerS are rank 0's own
   * replica's (tokens scaled by the replica count), and the outer* fields say what the synchronisations did.
   */
  'job.progress': message('job.progress', {
    jobId: Id,
    attempt: Count(1_000_000),
    rank: Count(65535),
    step: Count(2 ** 40),
    loss: Type.Number(), // mean training loss over the global batch
    evalLoss: Type.Optional(Type.Number()), // held-out loss, on evaluation steps
    lr: Type.Number({ minimum: 0 }),
    tokensPerS: Type.Number({ minimum: 0 }), // global tokens per second of this step
    stepMs: Type.Number({ minimum: 0 }),
    computeMs: Type.Number({ minimum: 0 }), // forward + backward + optimizer
    allreduceMs: Type.Number({ minimum: 0 }), // gradient all-reduce, as seen by this rank
    pipelineMs: Type.Optional(Type.Number({ minimum: 0 })), // the 1F1B section of the step (slowest stage)
    stageBusyMs: Type.Optional(Type.Array(Type.Number({ minimum: 0 }), { maxItems: 256 })), // compute per stage in it
    bubble: Type.Optional(Type.Number()), // idle share of the pipeline section: 1 − mean busy / pipelineMs
    optimizerBytes: Type.Optional(Type.Number({ minimum: 0 })), // AdamW state on this rank (smaller with ZeRO-1)
    paramCount: Type.Optional(Type.Number({ minimum: 0 })), // parameters this rank holds (its stage shard)
    outerSteps: Type.Optional(Count(2 ** 40)), // DiLoCo, on a step that ends a round: outer steps (synchronisations) taken so far
    outerSyncMs: Type.Optional(Type.Number({ minimum: 0 })), // DiLoCo, on a synchronisation step: the pseudo-gradient all-reduce
    outerSyncBytes: Type.Optional(Count(2 ** 40)), // …and the bytes rank 0 sent its successor in it
  }),
  /**
   * "Here is how step `step` went on my rank": every rank sends one per step, so the coordinator can break the
   * step time down per agent, measure each data-parallel link and name the straggler everyone waits for.
   * The phases add up to `stepMs` (waitMs is what is left: receives, evaluation, checkpoint hand-off, the worker).
   */
  'job.rank': message('job.rank', {
    jobId: Id,
    attempt: Count(1_000_000),
    rank: Count(65535),
    step: Count(2 ** 40),
    stepMs: Type.Number({ minimum: 0 }),
    computeMs: Type.Number({ minimum: 0 }), // this rank's forward + backward + optimizer
    allreduceMs: Type.Number({ minimum: 0 }), // gradient rings (data, tied) and the world sums, waiting included
    bubbleMs: Type.Number({ minimum: 0 }), // idle inside this rank's 1F1B section (pipeline waits)
    waitMs: Type.Number({ minimum: 0 }), // the rest of the step
    /** The data-parallel ring link to our successor: what this step's gradient all-reduce sent over it. */
    link: Type.Optional(
      Type.Object(
        { toRank: Count(65535), bytes: Count(2 ** 40), ms: Type.Number({ minimum: 0 }) },
        { additionalProperties: false },
      ),
    ),
    /**
     * DiLoCo, on a step that ended a round: outer steps taken so far, and a checksum of the weights every replica
     * continues from (FNV-1a of their float32 bits, model/diloco.ts): all ranks must report the same one.
     */
    outer: Type.Optional(Type.Object({ steps: Count(2 ** 40), checksum: Count(2 ** 32 - 1) }, { additionalProperties: false })),
  }),
  /**
   * "A checkpoint of step `step` is uploaded to the artifact store": the shard checkpoint of stage `shard.stage`,
   * tensor shard `shard.tp` (absent: the whole model), from that shard's data-parallel rank 0.
   */
  'job.checkpoint': message('job.checkpoint', {
    jobId: Id,
    attempt: Count(1_000_000),
    step: Count(2 ** 40),
    files: FileSet,
    shard: Type.Optional(Type.Object({ stage: Count(65535), tp: Count(65535) }, { additionalProperties: false })),
  }),
  /**
   * "This rank is finished with the attempt": ok, or failed with why. The trained model is the last checkpoint's
   * (job.checkpoint), so no files come with it.
   */
  'job.finished': message('job.finished', {
    jobId: Id,
    attempt: Count(1_000_000),
    rank: Count(65535),
    ok: Type.Boolean(),
    step: Count(2 ** 40),
    error: Type.Optional(Text(2048)),
    /** "The job itself is at fault (an invalid spec or plan, a diverged loss): running it again would fail the same way." */
    fatal: Type.Optional(Type.Boolean()),
  }),
};

export const coordinatorMessages = {
  /** "You are in." `nodeSecret` lets the agent reclaim its identity after a reconnect. */
  welcome: message('welcome', {
    protocol: Text(16),
    clusterId: Id,
    nodeId: Id,
    nodeSecret: Secret,
    heartbeatMs: Type.Integer({ minimum: 10, maximum: 600_000 }),
    heartbeatTimeoutMs: Type.Integer({ minimum: 20, maximum: 3_600_000 }),
  }),
  /**
   * "I tried your peer address: other agents can dial you (`reachable`), or they cannot and your links go through
   * `relay` ('coordinator')." `reason` says what the check found. Sent after every welcome, once the check is done.
   */
  reach: message('reach', { reachable: Type.Boolean(), reason: Text(512), relay: Type.Optional(Text(64)) }),
  /**
   * "A peer of group `groupId` waits for you at the relay: open a WebSocket to /ws/relay?session=`session` with
   * `Authorization: Bearer <key>` and treat it as an inbound peer link (it starts with that peer's `peer.hello`)."
   * The relay is the coordinator (/ws/relay on the URL the agent joined through) unless `url` names an agent relay.
   */
  'relay.open': message('relay.open', { session: Id, key: Secret, groupId: Id, url: Type.Optional(Text(256)) }),
  /** "Heard your heartbeat `seq`." Lets the agent notice a coordinator that has gone silent. */
  'heartbeat.ack': message('heartbeat.ack', { seq: Count(2 ** 52) }),
  /**
   * "You are rank `rank` of this group of `size`; in every ring of `rings` you are in, link to your successor and
   * accept your predecessor, with `token`." Without `rings` the group is one ring, 'world': ranks 0..size−1 in
   * order.
   */
  'group.assign': message('group.assign', {
    groupId: Id,
    token: Secret,
    rank: Count(65535),
    size: Type.Integer({ minimum: 1, maximum: 65536 }),
    peers: Type.Array(PeerInfo, { maxItems: 65536 }),
    segmentBytes: Type.Integer({ minimum: 4, maximum: 64 * 1024 * 1024 }),
    rings: Type.Optional(Type.Array(RingSpec, { minItems: 1, maxItems: MAX_RINGS })),
    /**
     * "You are this group's relay: let holders of `ticket` through your peer port's /ws/relay to `targets`" (the
     * members nobody can dial). Present on the relay agent's assignment only; ends with the group.
     */
    relayFor: Type.Optional(Type.Object({ ticket: Secret, targets: Type.Array(Id, { minItems: 1, maxItems: 65536 }) }, { additionalProperties: false })),
  }),
  /**
   * "Relay group `groupId`'s links to `targets` for holders of `ticket`", to an idle agent that can be dialled when
   * no member of the group can (a member relay gets `relayFor` in its assignment instead). Ended by `group.release`.
   */
  'relay.grant': message('relay.grant', { groupId: Id, ticket: Secret, targets: Type.Array(Id, { minItems: 1, maxItems: 65536 }) }),
  /** "This group is over; close its links." */
  'group.release': message('group.release', { groupId: Id }),
  /** "Run this collective on your group's ring." Data is generated from (seed, rank) so every side can check it. */
  'collective.run': message('collective.run', {
    groupId: Id,
    runId: Id,
    op: Type.Union(COLLECTIVE_OPS.map((op) => Type.Literal(op))),
    elements: Count(2 ** 28), // float32 elements in each rank's buffer
    seed: Count(2 ** 31),
    root: Type.Optional(Count(65535)),
    repeats: Type.Integer({ minimum: 1, maximum: 1000 }),
    verify: Type.Boolean(),
    returnResult: Type.Boolean(),
  }),
  /**
   * "Train this job as rank `rank` of `world` on group `groupId`." The data is prepared on the coordinator:
   * the files of its folder (tokenizer.json, index.json, the shards) are artifacts to fetch into one folder. With `resume`, start from that
   * checkpoint (step and files) instead of a fresh initialisation.
   */
  'job.start': message('job.start', {
    jobId: Id,
    attempt: Count(1_000_000), // increases on every (re)start of the job, so stale messages are told apart
    groupId: Id,
    rank: Count(65535),
    world: Type.Integer({ minimum: 1, maximum: 65536 }),
    spec: JobSpec,
    data: DataFiles, // tokenizer.json, index.json and every shard file it lists, by name
    resume: Type.Optional(Type.Object({ step: Count(2 ** 40), files: FileSet }, { additionalProperties: false })), // this rank's shard of it
    /**
     * A frozen model the last pipeline stage runs forward-only beside the one it trains: dpo's reference, distill's
     * teacher. A registry version's files (config.json, model.safetensors or model.int8.safetensors, tokenizer.json).
     */
    frozen: Type.Optional(Type.Object({ role: Type.Union([Type.Literal('reference'), Type.Literal('teacher')]), files: FileSet }, { additionalProperties: false })),
    /**
     * A LoRA job's frozen base (spec.lora): the init.from version's files, which every rank loads and cuts to its
     * shard; what the job trains, checkpoints and resumes is only the adapter.
     */
    base: Type.Optional(Type.Object({ files: FileSet }, { additionalProperties: false })),
    /**
     * W3C traceparent of the coordinator's span for this attempt. When present, every rank traces its steps: rank 0
     * broadcasts each step's span context over the world ring so that one step's spans on every agent share a trace.
     */
    trace: Type.Optional(Type.String({ pattern: '^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$' })),
    /** The layout (protocol/layout.ts) and this attempt's schedule; absent: plain data parallelism over `world`. */
    plan: Type.Optional(
      Type.Object(
        {
          layout: Type.Object(
            { data: Type.Integer({ minimum: 1, maximum: 65536 }), pipeline: Type.Integer({ minimum: 1, maximum: 256 }), tensor: Type.Integer({ minimum: 1, maximum: 256 }) },
            { additionalProperties: false },
          ),
          stages: Type.Array(Type.Tuple([Count(4096), Count(4096)]), { minItems: 1, maxItems: 256 }), // [firstLayer, endLayer) per stage
          microBatches: Type.Integer({ minimum: 1, maximum: 4096 }),
          zero: Type.Union([Type.Literal(0), Type.Literal(1)]),
        },
        { additionalProperties: false },
      ),
    ),
  }),
  /** "Stop working on this job now" (cancelled, or re-planned after a membership change). */
  'job.stop': message('job.stop', { jobId: Id, reason: Text(1024) }),
  /** A refusal or failure the agent should show its user. */
  error: message('error', { code: Text(64), message: Text(1024) }),
};

export const parseAgentMessage = messageParser('agent', agentMessages);
export const parseCoordinatorMessage = messageParser('coordinator', coordinatorMessages);
export type AgentMessage = MessageOf<typeof agentMessages>;
export type CoordinatorMessage = MessageOf<typeof coordinatorMessages>;
export type Hello = MessageOf<{ hello: (typeof agentMessages)['hello'] }>;
export type CapabilitiesInfo = import('@sinclair/typebox').Static<typeof Capabilities>;
export type GroupAssign = MessageOf<{ a: (typeof coordinatorMessages)['group.assign'] }>;
export type RingSpecT = import('@sinclair/typebox').Static<typeof RingSpec>;
export type CollectiveRun = MessageOf<{ a: (typeof coordinatorMessages)['collective.run'] }>;
export type CollectiveResult = MessageOf<{ a: (typeof agentMessages)['collective.result'] }>;
export type JobStart = MessageOf<{ a: (typeof coordinatorMessages)['job.start'] }>;
export type JobProgress = MessageOf<{ a: (typeof agentMessages)['job.progress'] }>;
export type JobRankReport = MessageOf<{ a: (typeof agentMessages)['job.rank'] }>;

/** The rings of an assignment: the ones it names, or the one 'world' ring of every rank in order. */
export function assignedRings(assign: { size: number; rings?: RingSpecT[] | undefined }): RingSpecT[] {
  return assign.rings ?? [{ id: WORLD_RING, members: Array.from({ length: assign.size }, (_, r) => r) }];
}

/**
 * What is wrong with `rings` for a group of `size` ranks, beyond what the schema checks (or repeating it, for
 * callers that build rings themselves): one line per problem, naming the field; empty when they are fine.
 */
export function ringProblems(rings: ReadonlyArray<{ readonly id: string; readonly members: readonly number[] }>, size: number): string[] {
  const problems: string[] = [];
  const enough = () => problems.length >= 20; // enough to act on; a huge bad list should not make a huge message
  const idPattern = new RegExp(RingId.pattern as string);
  if (rings.length === 0 || rings.length > MAX_RINGS) problems.push(`/rings must hold 1 to ${MAX_RINGS} rings, not ${rings.length}`);
  const ids = new Set<string>();
  for (const [i, ring] of rings.entries()) {
    if (!idPattern.test(ring.id)) problems.push(`/rings/${i}/id '${String(ring.id).slice(0, 70)}' must be 1–64 characters of A–Z a–z 0–9 . _ -`);
    else if (ids.has(ring.id)) problems.push(`/rings/${i}/id '${ring.id}' names two rings`);
    ids.add(ring.id);
    const members = ring.members;
    if (members.length === 0 || members.length > 65535) problems.push(`/rings/${i}/members must hold 1 to 65535 ranks, not ${members.length}`);
    const inRing = new Set<number>();
    for (const [j, r] of members.entries()) {
      if (enough()) return problems;
      if (!Number.isInteger(r) || r < 0 || r >= size) problems.push(`/rings/${i}/members/${j} (${r}) is not a rank of a group of ${size}`);
      else if (inRing.has(r)) problems.push(`/rings/${i}/members/${j}: rank ${r} is in ring '${ring.id}' twice`);
      inRing.add(r);
    }
    if (enough()) return problems;
  }
  return problems;
}
