/**
 * Gathers what a stage's evaluation suite needs and runs it in a worker thread (eval-worker.ts): the model under
 * evaluation (HF files), the frozen version it is judged against (DPO's reference, distillation's teacher, from
 * the registry), and the held-out data — `eval.tasks` when the spec names a file of {prompt, response} tasks,
 * else the prepared dataset's held-out split (heldout.jsonl for examples, the held-out token shards for text).
 * Pre-training has no suite beyond the held-out loss every job reports.
 */
import type { BackendChoice } from '../../protocol/backends.ts';
import { prepareBackendEnv, terminateComputeWorker } from '../../model/compute/backend.ts';
import { Worker } from 'node:worker_threads';
import { parseHeldOutRecords, readExampleFile, type HeldOutRecord } from '../../model/examples.ts';
import { bytesPerToken, type ShardIndex } from '../../model/shard-index.ts';
import { dataFormatOf, type ResolvedJobSpec } from '../../protocol/job-spec.ts';
import type { ArtifactStore } from '../store/artifact-store.ts';
import type { FileSet } from './checkpoint-shards.ts';
import type { EvalWorkerInput, SuiteResults } from './eval-worker.ts';
import type { ModelRegistry } from '../registry/registry.ts';
import { refOf, versionPaths } from './stage-inputs.ts';

export type { SuiteResults } from './eval-worker.ts';

export const EVAL_DEFAULTS = Object.freeze({
  maxExamples: 200, // examples (or text windows) per suite run
  maxNewTokens: 32, // longest greedy answer in exact-match
});

export interface EvaluateOptions {
  spec: ResolvedJobSpec;
  /** The prepared dataset's files (name → digest), as the attempt sent them to its agents. */
  data: FileSet;
  /** The model under evaluation, as exportHf wrote it: each file's bytes or its path (read in the worker). */
  model: Record<string, Uint8Array | string>;
  artifacts: ArtifactStore;
  registry: ModelRegistry;
  /** What the suite computes on, in its worker (default cpu). */
  backend?: BackendChoice;
}

/** Whether a job of this kind has a suite to run (pre-training: none). */
export const hasSuite = (spec: Pick<ResolvedJobSpec, 'kind'>): spec is ResolvedJobSpec & { kind: 'sft' | 'dpo' | 'distill' } =>
  spec.kind === 'sft' || spec.kind === 'dpo' || spec.kind === 'distill';

/** Runs the job's suite off the main thread; null for a kind that has none. */
export async function evaluateStage(o: EvaluateOptions): Promise<SuiteResults | null> {
  const input = await suiteInput(o);
  return input ? runInWorker(input, o.backend) : null;
}

/** Everything the worker needs, read on the main thread (file and artifact I/O only, no compute). */
export async function suiteInput(o: EvaluateOptions): Promise<EvalWorkerInput | null> {
  const { spec } = o;
  if (!hasSuite(spec)) return null;
  const maxExamples = spec.eval?.maxExamples ?? EVAL_DEFAULTS.maxExamples;
  const input: EvalWorkerInput = {
    kind: spec.kind, model: o.model, beta: spec.dpo?.beta ?? 0.1, maxExamples, maxNewTokens: spec.eval?.maxNewTokens ?? EVAL_DEFAULTS.maxNewTokens,
  };
  const frozenRef = spec.kind === 'dpo' ? refOf(spec.init!.from) : spec.kind === 'distill' ? refOf(spec.distill!.teacher) : null;
  if (frozenRef) input.frozen = versionPaths(o.registry, frozenRef);
  const format = dataFormatOf(spec);
  if (spec.eval?.tasks && format === 'chat') input.records = await readTasks(spec.eval.tasks);
  else if (format !== 'text') input.records = await heldOutRecords(o.data, o.artifacts);
  else input.windows = await heldOutWindows(o.data, o.artifacts, spec.training.seqLen, maxExamples);
  return input;
}

/** `eval.tasks`: a .jsonl of {prompt, response} (or {messages}) tasks, checked line by line like training data. */
async function readTasks(path: string): Promise<HeldOutRecord[]> {
  const out: HeldOutRecord[] = [];
  for await (const { example } of readExampleFile(path, 'chat')) out.push(example);
  return out;
}

async function heldOutRecords(data: FileSet, artifacts: ArtifactStore): Promise<HeldOutRecord[]> {
  const digest = data['heldout.jsonl'];
  if (!digest) return [];
  return parseHeldOutRecords(Buffer.from(await artifacts.get(digest)).toString('utf8'));
}

/** Consecutive windows of seqLen + 1 ids from the held-out token shards, at most `max`. */
async function heldOutWindows(data: FileSet, artifacts: ArtifactStore, seqLen: number, max: number): Promise<Int32Array[]> {
  const indexDigest = data['index.json'];
  if (!indexDigest) return [];
  const index = JSON.parse(Buffer.from(await artifacts.get(indexDigest)).toString('utf8')) as ShardIndex;
  const width = bytesPerToken(index.dtype);
  const out: Int32Array[] = [];
  for (const shard of index.splits.heldOut.shards) {
    const digest = data[shard.file];
    if (!digest || out.length >= max) continue;
    const bytes = Buffer.from(await artifacts.get(digest));
    const ids = width === 2 ? new Uint16Array(bytes.buffer, bytes.byteOffset, bytes.length / 2) : new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length / 4);
    for (let at = 0; at + seqLen + 1 <= ids.length && out.length < max; at += seqLen) out.push(Int32Array.from(ids.subarray(at, at + seqLen + 1)));
  }
  return out;
}

/** The suite in a worker thread, so the coordinator keeps answering heartbeats. */
export function runInWorker(input: EvalWorkerInput, backend: BackendChoice = 'cpu'): Promise<SuiteResults> {
  prepareBackendEnv(backend);
  return new Promise((resolve, reject) => {
    const worker = new Worker(new URL('../../common/worker-boot.mjs', import.meta.url), {
      workerData: { entry: new URL('./eval-worker.ts', import.meta.url).href, input, backend },
    });
    worker.on('message', (m: { type: string; results?: SuiteResults; message?: string; code?: string }) => {
      if (m.type === 'done') resolve(m.results!);
      else if (m.type === 'error') reject(Object.assign(new Error(`evaluation failed: ${m.message}`), { code: m.code }));
      void terminateComputeWorker(worker, backend);
    });
    worker.once('error', reject);
    worker.once('exit', (code) => code !== 0 && reject(new Error(`evaluation worker exited with ${code}`)));
  });
}
