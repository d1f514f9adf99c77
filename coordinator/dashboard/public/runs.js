// The runs view: every run (job) with its final losses; tick two or more to compare them — their train (and
// held-out) loss curves on one chart, the spec keys they differ in, and export links — and the sweeps with their
// trials, the best one highlighted.
import { get } from './api.js';
import { StepChart } from './charts.js';
import { badge, card, empty, fill, h, num, table, time } from './dom.js';

/** One colour per compared run; its held-out loss is drawn dashed in the same colour. */
const PALETTE = ['#2f6db5', '#e0772b', '#3b8f5a', '#d1495b', '#7a5cc2', '#9aa3ad', '#b08900', '#17a2b8', '#6c757d', '#e83e8c'];
/** The runs list refetches at most this often while job events stream in. */
const RELOAD_MS = 2000;

export function mountRuns(root) {
  const selected = new Set();
  const sweepsBody = h('div');
  const runsBody = h('div');
  const compareBody = h('div', { 'data-testid': 'compare' });
  root.append(h('h1', 'Runs'), card('Sweeps', sweepsBody), card(null, runsBody), compareBody);
  let runs = [];
  let chart = null;
  let reloadTimer = null;
  let compareSeq = 0;

  const load = async () => {
    const [r, s] = await Promise.all([get('/api/runs'), get('/api/sweeps')]);
    runs = r.runs;
    for (const id of selected) if (!runs.some((x) => x.id === id)) selected.delete(id);
    renderRuns();
    fill(sweepsBody, s.sweeps.length ? s.sweeps.map(sweepTable) : empty('No sweeps: POST /api/sweeps or coordinator sweep submit sweep.json.'));
  };

  const renderRuns = () => {
    if (runs.length === 0) return fill(runsBody, empty('No runs yet.'));
    fill(runsBody, table(['', 'Run', 'State', 'Steps', 'Loss', 'Eval loss', 'Perplexity', 'Tokens/s', 'Model', 'Code', 'Submitted'],
      runs.map((r) => h('tr', { 'data-run-id': r.id },
        h('td', h('input', { type: 'checkbox', 'aria-label': `compare ${r.name}`, checked: selected.has(r.id), onchange: (e) => toggle(r.id, e.target.checked) })),
        h('td', h('a', { href: `#/jobs/${encodeURIComponent(r.id)}` }, r.name), h('div.muted.small', r.id)),
        h('td', badge(r.state)),
        h('td.num', `${num(r.steps, 0)} / ${num(r.totalSteps, 0)}`),
        h('td.num', num(r.trainLoss, 4)),
        h('td.num', num(r.evalLoss, 4)),
        h('td.num', num(r.evalPerplexity, 2)),
        h('td.num', num(r.tokensPerS, 0)),
        h('td', r.modelVersion ? `${r.name}@v${r.modelVersion}` : '–'),
        h('td.small', { title: r.codeVersion ?? '' }, r.codeVersion ? shortCode(r.codeVersion) : '–'),
        h('td', time(r.createdMs)))),
      { class: 'runs' }));
  };

  const toggle = (id, on) => {
    if (on) selected.add(id);
    else selected.delete(id);
    void renderCompare();
  };

  const renderCompare = async () => {
    const seq = ++compareSeq;
    chart?.destroy();
    chart = null;
    if (selected.size < 2) return fill(compareBody, selected.size ? card(null, empty('Tick one more run to compare.')) : null);
    let cmp;
    try {
      cmp = await get(`/api/runs/compare?ids=${[...selected].map(encodeURIComponent).join(',')}`);
    } catch (err) {
      return fill(compareBody, card('Compare', h('p.error', err.message)));
    }
    if (seq !== compareSeq) return; // a newer selection is being drawn
    const chartBox = h('div.chart', { 'data-testid': 'compare-chart' });
    const ids = cmp.runs.map((r) => r.id);
    fill(compareBody, card(`Comparing ${ids.length} runs`,
      chartBox,
      h('h3', 'Spec differences'),
      cmp.specDiff.length
        ? table(['Key', ...cmp.runs.map((r) => r.name)], cmp.specDiff.map((d) => [h('code', d.path), ...ids.map((id) => JSON.stringify(d.values[id] ?? null))]), { class: 'spec-diff' })
        : empty('The specs are the same.'),
      h('h3', 'Final metrics'),
      table(['', ...cmp.runs.map((r) => r.name)], [
        ['Train loss', ...cmp.runs.map((r) => h('span.num', num(r.trainLoss, 4)))],
        ['Eval loss', ...cmp.runs.map((r) => h('span.num', num(r.evalLoss, 4)))],
        ['Tokens/s', ...cmp.runs.map((r) => h('span.num', num(r.tokensPerS, 0)))],
        ['Export', ...cmp.runs.map((r) => h('span',
          h('a', { href: `/api/runs/${encodeURIComponent(r.id)}/export?format=csv`, download: `${r.id}.csv`, 'data-testid': 'export-csv' }, 'CSV'), ' · ',
          h('a', { href: `/api/runs/${encodeURIComponent(r.id)}/export?format=json`, download: `${r.id}.json` }, 'JSON')))],
      ], { class: 'compare-metrics' })));
    const withEval = cmp.series.runs.filter((s) => s.eval.some((v) => v !== null));
    const series = [
      ...cmp.series.runs.map((s, i) => ({ label: `${cmp.runs[i].name} train`, color: PALETTE[i % PALETTE.length] })),
      ...withEval.map((s) => ({ label: `${cmp.runs[ids.indexOf(s.id)].name} eval`, color: PALETTE[ids.indexOf(s.id) % PALETTE.length], points: true, dash: [4, 4] })),
    ];
    chart = new StepChart(chartBox, { series, yLabel: 'loss' });
    chart.setData(cmp.series.steps, [...cmp.series.runs.map((s) => s.train), ...withEval.map((s) => s.eval)]);
    chartBox.dataset.series = String(series.length);
  };

  const scheduleReload = () => {
    if (reloadTimer) return;
    reloadTimer = setTimeout(() => {
      reloadTimer = null;
      load().then(() => selected.size >= 2 && renderCompare(), () => {});
    }, RELOAD_MS);
  };

  load().catch(() => {});
  return {
    event: (name) => name === 'jobs' && scheduleReload(),
    resync: () => load().catch(() => {}),
    destroy: () => {
      clearTimeout(reloadTimer);
      chart?.destroy();
    },
  };
}

/** "0.1.0+3905adc1f2…-dirty" → "0.1.0+3905adc-dirty": the commit short enough for a table cell. */
function shortCode(v) {
  return v.replace(/\+([0-9a-f]{7})[0-9a-f]+/, '+$1');
}

function sweepTable(s) {
  const params = Object.keys(s.spec.parameters);
  return h('div.sweep', { 'data-sweep-id': s.id },
    h('h3', s.name, badge(s.state), h('span.muted.small', `${s.trials.length} of ${s.totalTrials} trials · ${s.stateReason}`)),
    table(['Trial', 'State', ...params, 'Loss', 'Model'], s.trials.map((t) => h('tr', { 'data-trial': t.idx, class: s.best?.idx === t.idx ? 'best' : undefined },
      h('td', h('a', { href: `#/jobs/${encodeURIComponent(t.jobId)}` }, t.name), s.best?.idx === t.idx ? h('span.badge.badge-succeeded', 'best') : null),
      h('td', badge(t.jobState)),
      params.map((p) => h('td.num', String(t.params[p]))),
      h('td.num', { title: t.lossKind === 'train' ? 'no held-out loss recorded: final train loss' : 'last held-out loss' }, num(t.loss, 4), t.lossKind === 'train' ? ' (train)' : ''),
      h('td', t.modelVersion ? `${t.name}@v${t.modelVersion}` : '–'))),
    { class: 'sweep-trials' }));
}
