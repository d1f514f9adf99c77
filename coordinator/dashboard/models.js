// The models view: every registered model and its versions with their lineage: the job that trained each, its
// final losses, and the version it was trained from.
import { get } from './api.js';
import { bytes, card, empty, fill, h, num, table, time } from './dom.js';

export function mountModels(root) {
  const body = h('div');
  root.append(h('h1', 'Models'), body);

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
  const { jobId, metrics = {}, parent } = v.lineage ?? {};
  const size = Object.values(v.files ?? {}).reduce((sum, f) => sum + f.bytes, 0);
  return [
    h('strong', `v${v.version}`),
    time(v.createdMs),
    h('span.num', num(metrics.loss, 4)),
    h('span.num', num(metrics.evalLoss, 4)),
    h('span.num', num(metrics.steps, 0)),
    jobId ? h('a', { href: `#/jobs/${encodeURIComponent(jobId)}` }, jobId) : '–',
    parent ? `${parent.name}@v${parent.version}` : '–',
    h('span.num', bytes(size)),
  ];
}
