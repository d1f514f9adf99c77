/**
 * Shared pieces of the trainer tests: a tiny prepared dataset, an artifact store over a folder, a recording
 * coordinator `send`, and a helper that runs one job on every rank of a fake in-memory ring.
 */
import { createHash } from 'node:crypto';
import { createReadStream, createWriteStream } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { Readable } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { AgentMessage, JobStart } from '../../protocol/control.ts';
import type { JobSpec } from '../../protocol/job-spec.ts';
import { prepareTokenData } from '../../model/prepare-data.ts';
import { jobLinks, runJob, type ArtifactStore, type JobFinished } from '../../node-agent/trainer/job-runner.ts';
import type { ParallelLayout } from '../../protocol/layout.ts';
import type { BackendChoice } from '../../model/compute/backend.ts';
import { splitLayers } from '../../model/shard-layout.ts';
import { flatFromStateDict, paramLayout } from '../../model/params.ts';
import { CheckpointSharder } from '../../coordinator/jobs/checkpoint-shards.ts';
import { ArtifactStore as CoordinatorArtifactStore } from '../../coordinator/store/artifact-store.ts';
import type { Logger } from '../../common/log.ts';
import { fakeTopology } from '../support/fake-topology.ts';

export const sha256 = (b: Uint8Array) => createHash('sha256').update(b).digest('hex');

/**
 * The coordinator's artifact store over a temporary folder, with the agent's side of it (what ArtifactClient does
 * over HTTP): downloads stream from the stored file and report the sha256 of what they copied; uploads stream the
 * chunks in. A test damages a stored artifact by writing to `pathOf(digest)`.
 */
export class DiskStore extends CoordinatorArtifactStore implements ArtifactStore {
  async download(digest: string, path: string): Promise<string> {
    if (!this.has(digest)) throw new Error(`no artifact ${digest}`);
    const hash = createHash('sha256');
    const src = createReadStream(this.pathOf(digest));
    src.on('data', (chunk) => hash.update(chunk as Buffer));
    await pipeline(src, createWriteStream(path));
    return hash.digest('hex');
  }
  async upload(chunks: readonly Uint8Array[], sha256: string): Promise<void> {
    await this.putStream(Readable.from(chunks.map((c) => Buffer.from(c.buffer, c.byteOffset, c.byteLength))), sha256);
  }
  async uploadFile(path: string, sha256: string): Promise<void> {
    await this.putStream(createReadStream(path), sha256);
  }
  async putAll(files: Record<string, Uint8Array>): Promise<Record<string, string>> {
    const out: Record<string, string> = {};
    for (const [name, bytes] of Object.entries(files)) out[name] = await this.put(bytes);
    return out;
  }
}

const WORDS = ('the a model learns to predict next token from context with attention and layers of small width ' +
  'data parallel ranks share gradients over a ring so every replica stays the same while steps run on cores').split(' ');

/** A small English-like corpus of blank-line-separated documents, deterministic. */
function corpusText(docs = 60, wordsPerDoc = 40): string {
  let x = 12345;
  const rnd = () => ((x = (Math.imul(x, 1103515245) + 12345) >>> 0) >>> 8) / (1 << 24);
  const out: string[] = [];
  for (let d = 0; d < docs; d++) {
    const w: string[] = [];
    for (let i = 0; i < wordsPerDoc; i++) w.push(WORDS[Math.floor(rnd() * WORDS.length)]!);
    out.push(`${w.join(' ')}.`);
  }
  return out.join('\n\n');
}

export interface Dataset {
  root: string;
  store: DiskStore;
  data: Record<string, string>; // file name → sha256, as job.start carries it
  vocabSize: number;
}

/** Prepares the corpus (vocab 300) and uploads the folder's files into a fresh DiskStore under the dataset's root. */
export async function tinyDataset(): Promise<Dataset> {
  const root = await mkdtemp(join(tmpdir(), 'trainer-test-'));
  const corpus = join(root, 'corpus.txt');
  await writeFile(corpus, corpusText());
  const outDir = join(root, 'prepared');
  const { index } = await prepareTokenData({ corpus, outDir, vocabSize: 300, heldOutFraction: 0.2, seed: 7 });
  const store = new DiskStore(join(root, 'store'));
  const files: Record<string, Uint8Array> = {};
  for (const name of await readdir(outDir)) files[name] = await readFile(join(outDir, name));
  const data = await store.putAll(files);
  return { root, store, data, vocabSize: index.vocabSize };
}

export function tinySpec(training: Partial<JobSpec['training']> = {}): JobSpec {
  return {
    name: 'tiny',
    model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
    data: { corpus: 'corpus.txt' },
    training: { steps: 5, batchSize: 4, microBatches: 1, seqLen: 16, seed: 42, lr: 1e-2, minLr: 1e-3, warmupSteps: 1, ...training },
  };
}

export function recordingLogger(lines: string[] = []): Logger & { lines: string[] } {
  const log = (m: string) => void lines.push(m);
  const logger: Logger & { lines: string[] } = { lines, debug: log, info: log, warn: log, error: log, child: () => logger };
  return logger;
}

export interface RankRun {
  messages: AgentMessage[];
  finished: JobFinished;
  /** performance.now() when runJob resolved. */
  finishedAt: number;
  log: string[];
}

export interface RunOptions {
  world: number;
  /** data × pipeline × tensor (default: data-parallel over `world`); its product must be `world`. */
  layout?: ParallelLayout;
  /** [firstLayer, endLayer) per stage (default: blocks split evenly). */
  stages?: Array<[number, number]>;
  /** Micro-batches per replica (default: the spec's). */
  microBatches?: number;
  zero?: 0 | 1;
  spec: JobSpec;
  ds: Dataset;
  /** The same for every rank, or per rank (shard checkpoints differ by stage and tensor shard). */
  resume?: JobStart['resume'] | ((rank: number) => JobStart['resume']);
  jobId?: string;
  signal?: AbortSignal;
  /** Per rank, overriding `signal`. */
  signals?: AbortSignal[];
  /** The fake ring's collective idle timeout (default 20 s). */
  idleTimeoutMs?: number;
  /** Called with each rank's messages as they are sent. */
  onSend?: (rank: number, msg: AgentMessage) => void;
  /** Each rank's compute backend: one for all, or per rank (default wasm). */
  backend?: BackendChoice | BackendChoice[];
}

/** Runs the job on every rank of an in-memory ring at once (each rank its own worker and work dir). */
export async function runRanks(o: RunOptions): Promise<RankRun[]> {
  const layout = o.layout ?? { data: o.world, pipeline: 1, tensor: 1 };
  const topology = fakeTopology(layout, o.idleTimeoutMs ?? 20_000);
  const plan: NonNullable<JobStart['plan']> | undefined = o.layout || o.stages || o.microBatches || o.zero
    ? {
        layout,
        stages: o.stages ?? splitLayers(o.spec.model.nLayer, Array(layout.pipeline).fill(1)),
        microBatches: o.microBatches ?? o.spec.training.microBatches ?? 1,
        zero: o.zero ?? 0,
      }
    : undefined;
  const work = await mkdtemp(join(o.ds.root, 'work-'));
  try {
    return await Promise.all(
      Array.from({ length: o.world }, async (_, rank) => {
        const messages: AgentMessage[] = [];
        const log = recordingLogger();
        const start: JobStart = {
          type: 'job.start', jobId: o.jobId ?? 'job1', attempt: 1, groupId: 'g1', rank, world: o.world, spec: o.spec as JobStart['spec'], data: o.ds.data,
          ...(o.resume ? { resume: typeof o.resume === 'function' ? o.resume(rank) : o.resume } : {}),
          ...(plan ? { plan } : {}),
        };
        const finished = await runJob(start, {
          links: (placement) => jobLinks(topology.sourceOf(rank), placement),
          artifacts: o.ds.store,
          send: (m) => (messages.push(m), o.onSend?.(rank, m)),
          log,
          backend: (Array.isArray(o.backend) ? o.backend[rank] : o.backend) ?? 'wasm',
          signal: o.signals?.[rank] ?? o.signal ?? new AbortController().signal,
          workDir: join(work, `rank${rank}`),
        });
        return { messages, finished, finishedAt: performance.now(), log: log.lines };
      }),
    );
  } finally {
    await rm(work, { recursive: true, force: true });
  }
}

export const progressOf = (msgs: AgentMessage[]) => msgs.filter((m): m is Extract<AgentMessage, { type: 'job.progress' }> => m.type === 'job.progress');
export const checkpointsOf = (msgs: AgentMessage[]) => msgs.filter((m): m is Extract<AgentMessage, { type: 'job.checkpoint' }> => m.type === 'job.checkpoint');

export function relDiff(a: number, b: number): number {
  return Math.abs(a - b) / Math.max(Math.abs(b), 1e-12);
}

/** max |a − b| / max |b| (see test/model/train-step.test.ts for why not per element). */
export function maxRel(a: Float32Array, b: Float32Array): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < a.length; i++) {
    diff = Math.max(diff, Math.abs(a[i]! - b[i]!));
    scale = Math.max(scale, Math.abs(b[i]!));
  }
  return diff / scale;
}

/** The job.checkpoint messages of `step` from every rank (one per stage shard). */
export function finalCheckpoints(runs: RankRun[], step: number) {
  return runs.flatMap((r) => checkpointsOf(r.messages)).filter((c) => c.step === step);
}

/**
 * The whole trained model as the coordinator would register it: the shard checkpoints of the last step merged
 * (coordinator/jobs/checkpoint-shards.ts), as one flat buffer in paramLayout order.
 */
export async function trainedParams(runs: RankRun[], ds: Dataset, spec: JobSpec): Promise<Float32Array> {
  for (const r of runs) if (!r.finished.ok) throw new Error(`rank ${r.finished.rank} failed: ${r.finished.error}`);
  const step = Math.max(...runs.map((r) => r.finished.step));
  const parts = finalCheckpoints(runs, step);
  if (parts.length === 0) throw new Error(`no checkpoint of step ${step}`);
  const sharder = new CheckpointSharder(ds.store, join(ds.root, 'scratch'));
  const files = parts.length === 1 ? parts[0]!.files : await sharder.mergeShards({ config: spec.model }, parts.map((p) => p.files));
  const canonical = await sharder.load(files);
  return flatFromStateDict(canonical.model, paramLayout(spec.model));
}
