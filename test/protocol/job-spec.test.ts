import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateJobSpec, TRAINING_DEFAULTS } from '../../protocol/job-spec.ts';

const good = () => ({
  name: 'demo',
  model: { vocabSize: 512, nCtx: 64, nLayer: 2, nHead: 4, nEmbd: 128 },
  data: { corpus: 'demo' },
  training: { steps: 100, batchSize: 16, seqLen: 64 },
  parallel: { data: 2 },
});

test('a minimal valid spec is accepted with every default filled in', () => {
  const res = validateJobSpec(good());
  assert.equal(res.ok, true);
  if (!res.ok) return;
  assert.equal(res.spec.training.lr, TRAINING_DEFAULTS.lr);
  assert.equal(res.spec.training.microBatches, 1);
  assert.equal(res.spec.data.heldOutFraction, 0.05);
  assert.deepEqual(res.spec.parallel, { data: 2, pipeline: 1, tensor: 1, minData: 2 }, 'not elastic unless minData says so');
  assert.equal(res.spec.training.keepCheckpoints, 3);
  assert.equal(res.spec.training.maxRestarts, 10);
});

test('a spec without parallel defaults to auto', () => {
  const { parallel: _p, ...spec } = good();
  const res = validateJobSpec(spec);
  assert.equal(res.ok && res.spec.parallel, 'auto');
});

const bad: Array<[string, (s: ReturnType<typeof good>) => unknown, RegExp[]]> = [
  ['a missing model and an unknown field', (s) => ({ ...s, model: undefined, colour: 'red' }), [/\/model/, /colour|additional/i]],
  ['a negative learning rate and a zero step count', (s) => ({ ...s, training: { ...s.training, lr: -1, steps: 0 } }), [/\/training\/lr/, /\/training\/steps/]],
  ['heads that do not divide the width', (s) => ({ ...s, model: { ...s.model, nHead: 3 } }), [/\/model\/nEmbd 128 must be divisible by \/model\/nHead 3/]],
  ['a sequence longer than the context', (s) => ({ ...s, training: { ...s.training, seqLen: 65 } }), [/seqLen 65 exceeds \/model\/nCtx 64/]],
  ['a batch that does not split over the ranks', (s) => ({ ...s, training: { ...s.training, batchSize: 15 } }), [/batchSize 15 must divide evenly over \/parallel\/data 2/]],
  ['a per-rank batch that does not split into micro-batches', (s) => ({ ...s, training: { ...s.training, microBatches: 3 } }), [/per rank \(8\) must divide evenly into \/training\/microBatches 3/]],
  ['minLr above lr and warm-up longer than training', (s) => ({ ...s, training: { ...s.training, lr: 1e-3, minLr: 1e-2, warmupSteps: 500 } }), [/minLr/, /warmupSteps 500 exceeds/]],
  ['minData above data', (s) => ({ ...s, parallel: { data: 2, minData: 3 } }), [/\/parallel\/minData 3 exceeds \/parallel\/data 2/]],
  ['a batch that does not split over minData ranks', (s) => ({ ...s, training: { ...s.training, batchSize: 3 }, parallel: { data: 3, minData: 2 } }), [/batchSize 3 must divide evenly over \/parallel\/minData 2 ranks × 1/]],
  ['a negative retention', (s) => ({ ...s, training: { ...s.training, keepCheckpoints: -1 } }), [/\/training\/keepCheckpoints/]],
  ['a name with a slash', (s) => ({ ...s, name: 'a/b' }), [/\/name/]],
  ['a vocabulary smaller than the byte alphabet', (s) => ({ ...s, model: { ...s.model, vocabSize: 100 } }), [/\/model\/vocabSize/]],
  ['early stopping without checkpoints', (s) => ({ ...s, training: { ...s.training, evalEvery: 10 }, eval: { earlyStopping: { patience: 2 } } }), [/earlyStopping needs \/training\/checkpointEvery > 0/]],
  ['early stopping evaluating off the checkpoint steps', (s) => ({ ...s, training: { ...s.training, evalEvery: 10, checkpointEvery: 4 }, eval: { earlyStopping: { patience: 2 } } }), [/evalEvery 10 must be a multiple of \/training\/checkpointEvery 4/]],
  ['LoRA without a base, a rank above the width and an unknown target', (s) => ({ ...s, lora: { rank: 256, targets: ['attn.c_attn', 'wte'] } }), [/\/lora\/targets/]],
  ['LoRA without a base to adapt', (s) => ({ ...s, lora: {} }), [/\/init a LoRA job needs init\.from/]],
  ['a LoRA rank above the width', (s) => ({ ...s, init: { from: 'base@1' }, lora: { rank: 256 } }), [/\/lora\/rank 256 exceeds \/model\/nEmbd 128/]],
  ['an unknown gradient wire format', (s) => ({ ...s, training: { ...s.training, gradientWire: 'int4' } }), [/\/training\/gradientWire/]],
  ['a DiLoCo block with an unknown field and a momentum of 1', (s) => ({ ...s, training: { ...s.training, diloco: { outerMomentum: 1, H: 5 } } }), [/\/training\/diloco\/outerMomentum/, /\/training\/diloco/]],
  ['DiLoCo with ZeRO-1, a pipeline and checkpoints and evaluations off its rounds', (s) => ({
    ...s,
    training: { ...s.training, zero: 1, checkpointEvery: 15, evalEvery: 7, diloco: { innerSteps: 10 } },
    parallel: { data: 2, pipeline: 2 },
  }), [/zero 1 cannot be used with \/training\/diloco/, /checkpointEvery 15 must be a multiple of \/training\/diloco\/innerSteps 10/, /evalEvery 7 must be a multiple of \/training\/diloco\/innerSteps 10/, /diloco needs \/parallel\/pipeline and \/parallel\/tensor of 1/]],
];

test('gradientWire defaults to f32 and DiLoCo, when asked for, to the paper\'s settings', () => {
  const plain = validateJobSpec(good());
  assert.ok(plain.ok);
  assert.equal(plain.spec.training.gradientWire, 'f32');
  assert.ok(!('diloco' in plain.spec.training), 'no diloco key unless asked for: plain data parallelism');
  const res = validateJobSpec({ ...good(), training: { ...good().training, gradientWire: 'bf16', checkpointEvery: 100, diloco: { innerSteps: 50 } } });
  assert.ok(res.ok, res.ok ? '' : res.errors.join('; '));
  assert.equal(res.spec.training.gradientWire, 'bf16');
  assert.deepEqual(res.spec.training.diloco, { innerSteps: 50, outerLr: 0.7, outerMomentum: 0.9, nesterov: true });
});

test('a LoRA block gets rank 8, alpha 2 × rank, no dropout and every target, in canonical order', () => {
  const res = validateJobSpec({ ...good(), init: { from: 'base@1' }, lora: {} });
  assert.ok(res.ok, res.ok ? '' : res.errors.join('; '));
  assert.deepEqual(res.spec.lora, { rank: 8, alpha: 16, dropout: 0, targets: ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj'] });
  const picked = validateJobSpec({ ...good(), init: { from: 'base@1' }, lora: { rank: 4, targets: ['mlp.c_fc', 'attn.c_attn'] } });
  assert.ok(picked.ok);
  assert.deepEqual(picked.spec.lora, { rank: 4, alpha: 8, dropout: 0, targets: ['attn.c_attn', 'mlp.c_fc'] });
  const plain = validateJobSpec(good());
  assert.ok(plain.ok && !('lora' in plain.spec), 'no lora key unless asked for');
});

test('early stopping that evaluates on checkpoint steps is accepted', () => {
  const res = validateJobSpec({ ...good(), training: { ...good().training, evalEvery: 10, checkpointEvery: 5 }, eval: { earlyStopping: { patience: 2, minDelta: 0.01 } } });
  assert.equal(res.ok, true, res.ok ? '' : res.errors.join('; '));
});

for (const [what, mutate, expected] of bad) {
  test(`a spec with ${what} is refused, naming each bad field`, () => {
    const res = validateJobSpec(mutate(good()));
    assert.equal(res.ok, false);
    if (res.ok) return;
    for (const re of expected) assert.ok(res.errors.some((e) => re.test(e)), `expected an error matching ${re}, got:\n${res.errors.join('\n')}`);
  });
}

test('non-objects are refused with an error at the root', () => {
  for (const raw of [null, 42, 'job', []]) {
    const res = validateJobSpec(raw);
    assert.equal(res.ok, false);
  }
});
