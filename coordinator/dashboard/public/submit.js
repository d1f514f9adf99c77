// The submit-job form. Every input is named by the JSON pointer of its spec field (/training/steps), which is how
// the coordinator's 400 names a bad field ("/training/steps Expected integer to be greater or equal to 1"), so
// each server error is shown beside its input; one naming no input goes in the form's general error box.
import { ApiError, post } from './api.js';
import { card, h } from './dom.js';

/** [pointer, label, default, hint]; a blank optional field is left out of the spec (the server's default). */
const GROUPS = [
  ['/model', 'Model', [
    ['/model/vocabSize', 'Vocabulary', 1024, '258–65536 BPE tokens'],
    ['/model/nCtx', 'Context', 64, 'positions'],
    ['/model/nLayer', 'Layers', 2, 'transformer blocks'],
    ['/model/nHead', 'Heads', 4, 'must divide the width'],
    ['/model/nEmbd', 'Width', 64, 'd_model'],
  ]],
  ['/data', 'Data', [
    ['/data/corpus', 'Corpus', 'demo', "'demo' or a .txt/.jsonl path on the coordinator"],
    ['/data/heldOutFraction', 'Held-out share', '', 'default 0.05'],
  ]],
  ['/training', 'Training', [
    ['/training/steps', 'Steps', 200, 'optimizer steps'],
    ['/training/batchSize', 'Batch size', 8, 'sequences per step, all replicas'],
    ['/training/seqLen', 'Sequence length', 64, '≤ context'],
    ['/training/microBatches', 'Micro-batches', '', 'default 1'],
    ['/training/lr', 'Learning rate', '', 'default 0.003'],
    ['/training/minLr', 'Final learning rate', '', 'default 0.0003'],
    ['/training/warmupSteps', 'Warm-up steps', '', 'default 0'],
    ['/training/evalEvery', 'Evaluate every', 20, 'steps; 0: never'],
    ['/training/checkpointEvery', 'Checkpoint every', 50, 'steps; 0: only at the end'],
    ['/training/seed', 'Seed', '', 'default 1337'],
    ['/training/zero', 'ZeRO stage', '', '0 or 1'],
  ]],
];
const TEXT_FIELDS = new Set(['/name', '/data/corpus']);
const LAYOUT_FIELDS = [['/parallel/data', 'Data replicas', 1], ['/parallel/pipeline', 'Pipeline stages', 1], ['/parallel/tensor', 'Tensor shards', 1]];

export function mountSubmit(root, { navigate }) {
  const slots = new Map(); // pointer → the element its errors go in
  const inputs = new Map(); // pointer → input
  const general = h('div.error-box', { 'data-testid': 'form-errors', role: 'alert', hidden: true });

  const field = ([pointer, label, value, hint]) => {
    const input = h('input', {
      id: `f${pointer.replaceAll('/', '-')}`,
      name: pointer,
      type: TEXT_FIELDS.has(pointer) ? 'text' : 'number',
      step: 'any',
      value: String(value),
      'aria-describedby': `e${pointer.replaceAll('/', '-')}`,
    });
    const error = h('div.field-error', { id: `e${pointer.replaceAll('/', '-')}`, 'data-error-for': pointer });
    inputs.set(pointer, input);
    slots.set(pointer, error);
    return h('div.field', h('label', { for: input.id }, label), input, hint ? h('div.hint', hint) : null, error);
  };
  const groupError = (pointer) => {
    const el = h('div.field-error', { 'data-error-for': pointer });
    slots.set(pointer, el);
    return el;
  };

  const auto = h('input#parallel-auto', { type: 'radio', name: 'parallel', value: 'auto', checked: true, onchange: () => toggleLayout() });
  const manual = h('input#parallel-manual', { type: 'radio', name: 'parallel', value: 'manual', onchange: () => toggleLayout() });
  const layoutFields = h('div.fields', LAYOUT_FIELDS.map(field));
  const toggleLayout = () => {
    for (const input of layoutFields.querySelectorAll('input')) input.disabled = auto.checked;
  };

  const submit = h('button', { type: 'submit' }, 'Submit job');
  const form = h('form#submit-form', { novalidate: true, onsubmit: (e) => (e.preventDefault(), send()) },
    card('Job', field(['/name', 'Name', 'tiny-gpt', 'job and model name'])),
    GROUPS.map(([pointer, title, fields]) => card(title, groupError(pointer), h('div.fields', fields.map(field)))),
    card('Parallelism', groupError('/parallel'),
      h('div.radios',
        h('label', auto, ' auto: the planner chooses'),
        h('label', manual, ' fixed layout')),
      layoutFields),
    general,
    h('div.actions', submit));
  toggleLayout();
  root.append(h('h1', 'Submit a job'), form);

  const clearErrors = () => {
    for (const el of slots.values()) el.textContent = '';
    for (const input of inputs.values()) input.removeAttribute('aria-invalid');
    general.replaceChildren();
    general.hidden = true;
  };

  /** Puts one error line beside the field its pointer names, or its group, or in the general box. */
  const showError = (line) => {
    const pointer = /^\/[\w/]*/.exec(line)?.[0];
    let at = pointer;
    while (at && !slots.has(at)) at = at.slice(0, at.lastIndexOf('/'));
    const slot = at && slots.get(at);
    if (!slot) {
      general.hidden = false;
      general.append(h('div', line));
      return;
    }
    slot.append(h('div', line));
    inputs.get(at)?.setAttribute('aria-invalid', 'true');
  };

  const spec = () => {
    const out = {};
    const missing = [];
    for (const [pointer, input] of inputs) {
      if (input.disabled) continue;
      const raw = input.value.trim();
      if (raw === '') {
        if (isRequired(pointer)) missing.push(`${pointer} is required`);
        continue;
      }
      setAt(out, pointer, TEXT_FIELDS.has(pointer) ? raw : Number(raw));
    }
    if (auto.checked) out.parallel = 'auto';
    return { out, missing };
  };

  async function send() {
    clearErrors();
    const { out, missing } = spec();
    if (missing.length) return missing.forEach(showError); // the server would say the same; no round trip
    submit.disabled = true;
    try {
      const job = await post('/api/jobs', out);
      navigate(`#/jobs/${encodeURIComponent(job.id)}`);
    } catch (err) {
      if (err instanceof ApiError && err.details.length) err.details.forEach(showError);
      else showError(err.message);
    } finally {
      submit.disabled = false;
    }
  }
}

/** Fields the spec requires (job-spec.ts): the model, the corpus and steps, batch and sequence length. */
function isRequired(pointer) {
  return pointer === '/name' || pointer.startsWith('/model/') || pointer === '/data/corpus' || pointer === '/parallel/data'
    || ['/training/steps', '/training/batchSize', '/training/seqLen'].includes(pointer);
}

function setAt(obj, pointer, value) {
  const keys = pointer.slice(1).split('/');
  const last = keys.pop();
  for (const k of keys) obj = obj[k] ??= {};
  obj[last] = value;
}
