// The models view: every registered model and its versions with their lineage: the job that trained each (or the
// folder it was imported from), its final losses, and the version it was trained from; and a form that imports a
// published Hugging Face GPT-2 folder, as `coordinator models import` does.
import { ApiError, get, post } from './api.js';
import { bytes, card, empty, fill, h, num, table, time } from './dom.js';

/** The files an import takes (coordinator/registry/import.ts IMPORT_FILES); others in the chosen folder are left. */
const IMPORT_FILES = ['config.json', 'model.safetensors', 'tokenizer.json', 'vocab.json', 'merges.txt', 'generation_config.json', 'tokenizer_config.json', 'special_tokens_map.json'];

export function mountModels(root) {
  const body = h('div');
  root.append(h('h1', 'Models'), importForm(), body);

  const load = async () => {
    const { models } = await get('/api/models');
    if (models.length === 0) return fill(body, card(null, empty('No models yet: a job registers a version of its model when it succeeds.')));
    const versions = await Promise.all(models.map((m) => get(`/api/models/${encodeURIComponent(m.name)}/versions`)
      .then((r) => r.versions, () => [])));
    fill(body, models.map((m, i) => modelCard(m, versions[i])));
  };

  load().catch(() => {});
  return {
    event: (name) => name === 'models' && load().catch(() => {}),
    resync: () => load().catch(() => {}),
  };
}

function modelCard(model, versions) {
  return h('section.card', { 'data-model': model.name },
    h('h2', model.name, h('span.muted.small', ` ${model.versions} version${model.versions === 1 ? '' : 's'}, latest v${model.latest}`)),
    table(['Version', 'Registered', 'Loss', 'Eval loss', 'Steps', 'Trained by', 'Parent', 'Size'],
      [...versions].reverse().map((v) => versionRow(v)), { class: 'versions' }));
}

function versionRow(v) {
  const { jobId, metrics = {}, parent, imported } = v.lineage ?? {};
  const size = Object.values(v.files ?? {}).reduce((sum, f) => sum + f.bytes, 0);
  return [
    h('strong', `v${v.version}`),
    time(v.createdMs),
    h('span.num', num(metrics.loss, 4)),
    h('span.num', num(metrics.evalLoss, 4)),
    h('span.num', num(metrics.steps, 0)),
    jobId ? h('a', { href: `#/jobs/${encodeURIComponent(jobId)}` }, jobId) : imported ? h('span', { title: imported.source ?? '' }, 'imported') : '–',
    parent ? `${parent.name}@v${parent.version}` : '–',
    h('span.num', bytes(size)),
  ];
}

/**
 * Name + a folder's files → each importable file hashed (SHA-256, in the page), uploaded unless the coordinator has
 * those bytes already, then POST /api/models/:name/import. Hashing needs WebCrypto, which browsers give only to
 * secure origins (https, or localhost): elsewhere the form says to use HTTPS or the CLI.
 */
function importForm() {
  const name = h('input#import-name', { type: 'text', name: 'name', placeholder: 'gpt2', autocomplete: 'off', required: true });
  const files = h('input#import-files', { type: 'file', multiple: true, webkitdirectory: true });
  const status = h('p.muted.small', { 'data-testid': 'import-status' });
  const error = h('div.error-box', { hidden: true, role: 'alert', 'data-testid': 'import-error' });
  const button = h('button', { type: 'submit' }, 'Import');
  const say = (text) => fill(status, text);
  const form = h('form#import-form', {
    onsubmit: async (e) => {
      e.preventDefault();
      error.hidden = true;
      button.disabled = true;
      try {
        const chosen = [...files.files].filter((f) => IMPORT_FILES.includes(f.name));
        if (!globalThis.crypto?.subtle) throw new Error('this page is not on a secure origin (https or localhost), so the browser cannot hash files: serve the coordinator with --tls-cert, or use `coordinator models import DIR --name NAME`');
        const digests = {};
        for (const file of chosen) {
          say(`hashing ${file.name} (${bytes(file.size)})`);
          const hex = [...new Uint8Array(await crypto.subtle.digest('SHA-256', await file.arrayBuffer()))].map((b) => b.toString(16).padStart(2, '0')).join('');
          const head = await fetch(`/api/artifacts/${hex}`, { method: 'HEAD', credentials: 'same-origin' });
          if (head.status === 404) {
            say(`uploading ${file.name} (${bytes(file.size)})`);
            const put = await fetch(`/api/artifacts/${hex}`, { method: 'PUT', credentials: 'same-origin', headers: { 'content-type': 'application/octet-stream', 'x-requested-with': 'meshtrain' }, body: file });
            if (!put.ok) throw new ApiError(put.status, (await put.json().catch(() => null))?.error);
          } else if (!head.ok) throw new ApiError(head.status, null);
          digests[file.name] = hex;
        }
        say('checking and registering');
        const created = await post(`/api/models/${encodeURIComponent(name.value.trim())}/import`, { files: digests, source: chosen[0]?.webkitRelativePath?.split('/')[0] || 'dashboard upload' });
        say(`registered ${created.name} v${created.version}`);
      } catch (err) {
        say('');
        fill(error, err.message, ...(err.details?.length ? [h('ul', err.details.map((d) => h('li', d)))] : []));
        error.hidden = false;
      } finally {
        button.disabled = false;
      }
    },
  },
  h('div.field', h('label', { for: 'import-name' }, 'Model name'), name),
  h('div.field', h('label', { for: 'import-files' }, 'Hugging Face GPT-2 folder'), files,
    h('div.hint', 'config.json, model.safetensors (F32, F16 or BF16) and tokenizer.json (or vocab.json + merges.txt); generation_config.json, tokenizer_config.json and special_tokens_map.json are kept')),
  error, button, status);
  return card('Import a published model', form);
}
