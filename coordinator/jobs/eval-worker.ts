/**
 * Runs a stage's evaluation suite (model/eval-suites.ts) in a worker thread for the coordinator (started through
 * common/worker-boot.mjs by evaluator.ts): greedy generation over hundreds of prompts is seconds of
 * CPU, and on the coordinator's main thread it would hold up heartbeats long enough for agents to be declared dead.
 */
import { readFileSync } from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { loadBackend, type BackendChoice } from '../../model/compute/backend.ts';
import { exactMatch, preferenceEval, scoreRatio, type ChatRecord, type PreferenceRecord } from '../../model/eval-suites.ts';
import type { HeldOutRecord } from '../../model/examples.ts';
import { GPT } from '../../model/gpt.ts';
import { importHf } from '../../model/hf-format.ts';

/** What a suite run needs, all as bytes and plain data (it crosses into the worker by structured clone). */
export interface EvalWorkerInput {
  kind: 'sft' | 'dpo' | 'distill';
  /**
   * The model under evaluation as HF files (config.json, model.safetensors, tokenizer.json): each its bytes, or
   * the path the worker reads it from (a model file: GPT-2-small's is 500 MB, which the coordinator's main thread
   * should neither read nor copy into the worker).
   */
  model: Record<string, Uint8Array | string>;
  /** DPO's reference or distillation's teacher, as a registered version's files (bytes or paths). */
  frozen?: Record<string, Uint8Array | string>;
  /** Held-out chat or preference records; absent for a distillation on text, which uses `windows`. */
  records?: HeldOutRecord[];
  /** Held-out token windows (seqLen + 1 ids each) of a text dataset. */
  windows?: Int32Array[];
  beta: number;
  maxNewTokens: number;
  maxExamples: number;
}

export interface SuiteResults {
  /** The suite's numbers, as recorded in the 'eval' metrics row. */
  values: Record<string, number>;
  /** A few generated answers beside the expected ones (exact-match suites), for the log. */
  samples: Array<{ prompt: string; expected: string; got: string }>;
}

/** A version's files as bytes, reading those given as paths. */
function bytesOf(files: Record<string, Uint8Array | string>): Record<string, Uint8Array> {
  return Object.fromEntries(Object.entries(files).map(([name, f]) => [name, typeof f === 'string' ? readFileSync(f) : f]));
}

function load(files: Record<string, Uint8Array>): { model: GPT; tokenizer: ReturnType<typeof importHf>['tokenizer'] } {
  const loaded = importHf(files);
  return { model: new GPT(loaded.config, { flat: loaded.params }), tokenizer: loaded.tokenizer };
}

export async function runSuite(input: EvalWorkerInput): Promise<SuiteResults> {
  const { model, tokenizer } = load(bytesOf(input.model));
  const frozen = input.frozen ? load(bytesOf(input.frozen)).model : null;
  const chats = (input.records ?? []).filter((r): r is ChatRecord => r.kind === 'chat');
  const o = { maxNewTokens: input.maxNewTokens, maxExamples: input.maxExamples };
  try {
    switch (input.kind) {
      case 'sft': {
        const r = await exactMatch(model, tokenizer, chats, o);
        return { values: r.examples ? { exactMatch: r.exactMatch, examples: r.examples } : { examples: 0 }, samples: r.samples };
      }
      case 'dpo': {
        const pairs = (input.records ?? []).filter((r): r is PreferenceRecord => r.kind === 'preference');
        const { examples, ...r } = await preferenceEval(model, frozen!, tokenizer, pairs, input.beta, input.maxExamples);
        return { values: examples ? { ...r, examples } : { examples: 0 }, samples: [] };
      }
      default: { // distill
        const data = input.windows ? { windows: input.windows } : { records: chats };
        const { examples, ...r } = await scoreRatio(model, frozen!, tokenizer, data, o);
        return { values: examples ? { ...r, examples } : { examples: 0 }, samples: [] };
      }
    }
  } finally {
    model.dispose();
    frozen?.dispose();
  }
}

if (parentPort && workerData?.input) {
  try {
    await loadBackend((workerData.backend as BackendChoice | undefined) ?? 'cpu');
    parentPort.postMessage({ type: 'done', results: await runSuite(workerData.input as EvalWorkerInput) });
  } catch (err) {
    parentPort.postMessage({ type: 'error', message: (err as Error).message, code: (err as { code?: string }).code });
  }
}
