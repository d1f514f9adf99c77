// The job page's panels, each a function from the data it shows to DOM: the straggler banner, the step-time
// breakdown bars, the data-parallel links, the layout grid, the checkpoints and the planner's report.
import { COLORS } from './charts.js';
import { bytes, empty, h, ms, num, pct, table, time } from './dom.js';

const PARTS = [
  ['computeMs', 'compute', COLORS.compute],
  ['allreduceMs', 'all-reduce', COLORS.allreduce],
  ['bubbleMs', 'pipeline bubble', COLORS.bubble],
  ['waitMs', 'waiting', COLORS.wait],
];

/** The agent everyone waits for, named where no one can miss it; nothing when the ranks keep pace. */
export function stragglerBanner(straggler) {
  if (!straggler) return null;
  return h('div.straggler', { 'data-testid': 'straggler', role: 'status' },
    h('strong', `Straggler: ${straggler.nodeName}`),
    ` (rank ${straggler.rank}) computes in ${ms(straggler.computeMs)}, ${num(straggler.ratio, 1)}× the median ${ms(straggler.medianComputeMs)}`,
    straggler.reason ? h('div.small', straggler.reason) : null);
}

/** One stacked bar of a step's phases, scaled so `scaleMs` fills the width. */
function stackBar(b, scaleMs) {
  const bar = h('div.stack', { title: PARTS.map(([k, label]) => `${label} ${ms(b[k])}`).join(' · ') });
  for (const [key, label, color] of PARTS) {
    const v = b[key] ?? 0;
    if (v <= 0) continue;
    const seg = h('div.seg', { title: `${label} ${ms(v)}` });
    // Set through the CSSOM: the page's Content-Security-Policy refuses style attributes.
    seg.style.width = `${(100 * v) / scaleMs}%`;
    seg.style.background = color;
    bar.append(seg);
  }
  return bar;
}

export function phaseLegend() {
  return h('div.legend', PARTS.map(([, label, color]) => {
    const swatch = h('span.swatch');
    swatch.style.background = color;
    return h('span', swatch, label);
  }));
}

/** The latest step's split, overall and per rank (JobLive.breakdown and .ranks). */
export function breakdownPanel(live) {
  if (!live?.breakdown) return empty('No step has been broken down yet.');
  const ranks = live.ranks ?? [];
  const scale = Math.max(live.breakdown.stepMs, ...ranks.map((r) => r.stepMs)) || 1;
  const straggling = live.straggler?.rank;
  return h('div.breakdown',
    h('div.bar-row.overall', h('span.bar-label', 'step'), stackBar(live.breakdown, scale), h('span.bar-total', ms(live.breakdown.stepMs))),
    ranks.map((r) => h('div.bar-row', { class: r.rank === straggling ? 'straggling' : undefined, 'data-rank': r.rank },
      h('span.bar-label', `rank ${r.rank} · ${r.nodeName}`),
      stackBar(r, scale),
      h('span.bar-total', ms(r.stepMs)))));
}

/** Each data-parallel link's measured bandwidth; links under half the median are marked. */
export function linksPanel(links) {
  if (!links?.length) return empty('No data-parallel links (one replica), or none measured yet.');
  const sorted = [...links.map((l) => l.gbps)].sort((a, b) => a - b);
  const median = sorted[sorted.length >> 1];
  return table(['From', 'To', 'Bytes', 'Time', 'GB/s'], links.map((l) => h('tr', { class: l.gbps < median / 2 ? 'slow-link' : undefined },
    h('td', `${l.fromName} (rank ${l.fromRank})`),
    h('td', `${l.toName} (rank ${l.toRank})`),
    h('td.num', bytes(l.bytes)),
    h('td.num', ms(l.ms)),
    h('td.num', num(l.gbps, l.gbps < 1 ? 3 : 2)))), { class: 'links' });
}

/**
 * The layout as a picture: one block per data replica, in it a grid of pipeline stages (columns) × tensor shards
 * (rows), each cell naming its agent, rank and layers. `placement` as JobLive has it: [{rank, nodeName, dp, pp, tp,
 * layers}].
 */
export function layoutGrid(layout, placement, stragglerRank) {
  if (!layout || !placement?.length) return empty('Not placed yet.');
  const at = new Map(placement.map((p) => [`${p.dp}/${p.pp}/${p.tp}`, p]));
  const replicas = [];
  for (let d = 0; d < layout.data; d++) {
    const grid = h('div.stage-grid');
    grid.style.gridTemplateColumns = `repeat(${layout.pipeline}, minmax(8rem, 1fr))`;
    for (let t = 0; t < layout.tensor; t++) {
      for (let p = 0; p < layout.pipeline; p++) {
        const cell = at.get(`${d}/${p}/${t}`);
        grid.append(h('div.cell', { class: cell?.rank === stragglerRank ? 'straggling' : undefined, 'data-rank': cell?.rank },
          h('strong', cell?.nodeName ?? '?'),
          h('div.small', `rank ${cell?.rank ?? '?'} · stage ${p}${layout.tensor > 1 ? ` · shard ${t}` : ''}`),
          cell?.layers ? h('div.small.muted', layerText(cell.layers)) : null));
      }
    }
    replicas.push(h('div.replica', h('div.replica-label', `data replica ${d}`), grid));
  }
  return h('div.layout', { 'data-testid': 'layout' },
    h('p.muted', `${layout.data} data × ${layout.pipeline} pipeline × ${layout.tensor} tensor`), replicas);
}

function layerText([first, end]) {
  return end - first === 1 ? `layer ${first}` : `layers ${first}–${end - 1}`;
}

export function checkpointsPanel(checkpoints) {
  if (!checkpoints.length) return empty('No checkpoints yet.');
  return table(['Step', 'Attempt', 'Saved', 'Files'],
    checkpoints.map((c) => [num(c.step, 0), num(c.attempt, 0), time(c.createdMs), num(Object.keys(c.files ?? {}).length, 0)]),
    { class: 'checkpoints' });
}

const layoutName = (l) => `${l.data}×${l.pipeline}×${l.tensor}`;

/** GET /api/jobs/:id/plan: the explanation, predicted vs measured, and every candidate the planner weighed. */
export function planPanel(report) {
  const plan = report?.plan;
  if (!plan) return empty('Not planned yet: the planner runs when the job is started.');
  const chosen = plan.chosen;
  const chosenName = chosen && layoutName(chosen.layout);
  const isChosen = (c) => c.feasible && layoutName(c.layout) === chosenName && c.microBatches === chosen.microBatches;
  return h('div.plan',
    h('dl.facts',
      h('dt', 'Chosen'), h('dd', chosen ? `${chosenName} (data × pipeline × tensor), ${chosen.microBatches} micro-batches` : `none: ${plan.refused ?? ''}`),
      h('dt', 'Predicted step'), h('dd', ms(report.predictedStepMs)),
      h('dt', 'Measured step'), h('dd', report.measuredStepMs === null ? 'not yet' : `${ms(report.measuredStepMs)} (median of ${report.measuredSteps})`),
      h('dt', 'Error'), h('dd', report.relativeError === null ? '–' : `${report.relativeError >= 0 ? '+' : ''}${pct(report.relativeError)}`)),
    h('pre.explanation', plan.explanation),
    h('details', h('summary', `All ${plan.candidates.length} candidates`),
      table(['Layout', 'm', 'Predicted step', 'Compute', 'Bubble', 'Data all-reduce', 'Memory / agent', 'Verdict'],
        plan.candidates.map((c) => {
          const p = c.predicted;
          return h('tr', { class: isChosen(c) ? 'chosen' : c.feasible ? undefined : 'refused' },
            h('td', layoutName(c.layout)), h('td.num', num(c.microBatches, 0)), h('td.num', ms(p.stepMs)), h('td.num', ms(p.computeMs)),
            h('td.num', ms(p.bubbleMs)), h('td.num', ms(p.dataAllreduceMs)), h('td.num', bytes(p.memoryBytesPerAgent)),
            h('td', isChosen(c) ? 'chosen' : c.feasible ? 'feasible' : c.reason ?? 'refused'));
        }), { class: 'candidates' })));
}
