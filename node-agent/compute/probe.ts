/**
 * The compute probe (protocol/probe.ts): each shape's whole-model StageModel forward and backward of one
 * micro-batch, the way the trainer runs an unsplit model, on whatever backend is set. One warm-up run, then the
 * median of `reps` (one where the warm-up took over SLOW_MS: a software GPU takes seconds a run, and agents of a
 * machine measure one at a time). Runs in the capabilities worker at join; the coordinator fits the agent's costs
 * from it.
 */
import { PROBE_SHAPES } from '../../protocol/probe.ts';
import { initShardParams, shardLayout } from '../../model/shard-layout.ts';
import { StageModel } from '../../model/stage-model.ts';
import { gptConfig } from '../../model/params.ts';

const SLOW_MS = 500;

export async function runProbe(repsWanted = 3): Promise<number[]> {
  const out: number[] = [];
  for (const { model, rows, seqLen } of PROBE_SHAPES) {
    const config = gptConfig(model);
    const layout = shardLayout(config, { stage: 0, stages: 1, firstLayer: 0, endLayer: config.nLayer, tpRank: 0, tpSize: 1 });
    const stage = new StageModel(config, layout, initShardParams(config, layout, 1));
    const grads = new Float32Array(layout.totalSize);
    const ids = Int32Array.from({ length: rows * seqLen }, (_, i) => (i * 31 + 7) % config.vocabSize);
    const targets = Int32Array.from({ length: rows * seqLen }, (_, i) => (i * 17 + 3) % config.vocabSize);
    const times: number[] = [];
    let reps = repsWanted;
    try {
      for (let r = 0; r <= reps; r++) {
        grads.fill(0);
        const t0 = performance.now();
        await stage.backward({ ids }, rows, seqLen, { targets, scale: 1 }, grads);
        const ms = performance.now() - t0;
        if (r > 0) times.push(ms); // the first run compiles kernels and packs weights
        else if (ms > SLOW_MS) reps = 1;
      }
    } finally {
      stage.dispose();
    }
    times.sort((a, b) => a - b);
    out.push(Math.round(times[Math.floor(times.length / 2)]! * 1000) / 1000);
  }
  return out;
}
