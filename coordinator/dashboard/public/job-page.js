// One job's page: its state and a Cancel button, live loss / throughput / step-time charts, the straggler, the
// latest step's breakdown per rank, the data-parallel links, the layout, checkpoints and the planner's report.
// Metrics rows arrive on the stream and are merged by (kind, step): a resumed job re-runs steps after its last
// checkpoint, and the re-run's row replaces the old one, as it does in the coordinator's database.
import { ApiError, get, post } from './api.js';
import { COLORS, StepChart } from './charts.js';
import { badge, card, fill, h, num, time } from './dom.js';
import { breakdownPanel, checkpointsPanel, layoutGrid, linksPanel, phaseLegend, planPanel, stragglerBanner } from './job-panels.js';
import { progress } from './jobs.js';

const FINAL_STATES = new Set(['succeeded', 'failed', 'cancelled']);

export function mountJob(root, { store }, id) {
  const path = `/api/jobs/${encodeURIComponent(id)}`;
  const rows = new Map(); // `${kind}:${step}` → MetricRow
  let job = null;
  let checkpoints = [];
  let live = null;
  let plan = null;
  let redrawQueued = false;

  const header = h('div.job-header');
  const banner = h('div');
  const lossBox = h('div.chart', { 'data-testid': 'loss-chart' });
  const tokensBox = h('div.chart', { 'data-testid': 'tokens-chart' });
  const stepBox = h('div.chart', { 'data-testid': 'step-chart' });
  const breakdownBox = h('div');
  const linksBox = h('div');
  const layoutBox = h('div');
  const checkpointsBox = h('div');
  const planBox = h('div');
  root.append(
    h('p.crumbs', h('a', { href: '#/jobs' }, '← Jobs')),
    header, banner,
    h('div.grid2',
      card('Loss', lossBox),
      card('Throughput (tokens/s)', tokensBox)),
    card('Step time', phaseLegend(), stepBox, h('h3', 'Latest step, per rank'), breakdownBox),
    h('div.grid2',
      card('Layout', layoutBox),
      card('All-reduce links', linksBox)),
    card('Checkpoints', checkpointsBox),
    card('Plan', planBox),
  );
  const lossChart = new StepChart(lossBox, { yLabel: 'loss', series: [{ label: 'train', color: COLORS.train }, { label: 'eval', color: COLORS.eval, points: true }] });
  const tokensChart = new StepChart(tokensBox, { yLabel: 'tokens/s', series: [{ label: 'tokens/s', color: COLORS.tokens }] });
  const stepChart = new StepChart(stepBox, {
    yLabel: 'ms',
    stacked: true,
    series: [
      { label: 'compute', color: COLORS.compute },
      { label: 'all-reduce', color: COLORS.allreduce },
      { label: 'bubble', color: COLORS.bubble },
      { label: 'waiting', color: COLORS.wait },
    ],
  });

  const merge = (list) => {
    for (const r of list) rows.set(`${r.kind}:${r.step}`, r);
    if (!redrawQueued) {
      redrawQueued = true; // a burst of events redraws once per frame
      requestAnimationFrame(() => {
        redrawQueued = false;
        drawCharts();
      });
    }
  };

  const drawCharts = () => {
    const train = [...rows.values()].filter((r) => r.kind === 'train').sort((a, b) => a.step - b.step);
    const evalAt = new Map([...rows.values()].filter((r) => r.kind === 'eval').map((r) => [r.step, r.values.loss]));
    const steps = [...new Set([...train.map((r) => r.step), ...evalAt.keys()])].sort((a, b) => a - b);
    const trainAt = new Map(train.map((r) => [r.step, r.values.loss]));
    lossChart.setData(steps, [steps.map((s) => trainAt.get(s) ?? null), steps.map((s) => evalAt.get(s) ?? null)]);
    const x = train.map((r) => r.step);
    tokensChart.setData(x, [train.map((r) => r.values.tokensPerS ?? null)]);
    stepChart.setData(x, [
      train.map((r) => r.values.computeMs ?? 0),
      train.map((r) => r.values.allreduceMs ?? 0),
      train.map(bubbleMs),
      train.map((r) => r.values.waitMs ?? Math.max(0, (r.values.stepMs ?? 0) - (r.values.computeMs ?? 0) - (r.values.allreduceMs ?? 0) - bubbleMs(r))),
    ]);
    renderHeader();
  };

  const lastTrain = () => [...rows.values()].filter((r) => r.kind === 'train').reduce((a, r) => (!a || r.step > a.step ? r : a), null);
  const lastEval = () => [...rows.values()].filter((r) => r.kind === 'eval').reduce((a, r) => (!a || r.step > a.step ? r : a), null);

  const renderHeader = () => {
    if (!job) return;
    const running = !FINAL_STATES.has(job.state);
    const t = lastTrain();
    const e = lastEval();
    fill(header,
      h('h1', job.name, ' ', h('span.job-state', { 'data-testid': 'job-state', 'data-state': job.state }, badge(job.state))),
      h('p.muted', `${job.id} · ${job.stateReason}`),
      h('dl.facts.inline',
        h('dt', 'Step'), h('dd', progress(job.step, job.spec?.training?.steps)),
        h('dt', 'Attempt'), h('dd', num(job.attempt, 0)),
        h('dt', 'Tokens/s'), h('dd', num(live?.tokensPerS ?? t?.values.tokensPerS, 0)),
        h('dt', 'Loss'), h('dd', num(live?.loss ?? t?.values.loss, 4)),
        h('dt', 'Eval loss'), h('dd', { 'data-testid': 'eval-loss' }, num(live?.evalLoss ?? e?.values.loss, 4)),
        h('dt', 'Submitted'), h('dd', time(job.createdMs)),
        job.modelVersion ? [h('dt', 'Model'), h('dd', h('a', { href: '#/models' }, `${job.name}@v${job.modelVersion}`))] : null),
      h('div.actions', h('button.danger', { type: 'button', 'data-testid': 'cancel-job', disabled: !running, onclick: cancel }, 'Cancel job')));
  };

  const renderLive = () => {
    fill(banner, stragglerBanner(live?.straggler));
    fill(breakdownBox, breakdownPanel(live));
    fill(linksBox, linksPanel(live?.links));
    fill(layoutBox, live?.layout ? layoutGrid(live.layout, live.placement, live.straggler?.rank) : layoutFromPlan(plan?.plan, store.nodes));
  };

  async function cancel() {
    if (!confirm(`Cancel job ${job.name} (${job.id})?`)) return;
    try {
      const updated = await post(`${path}/cancel`);
      job = { ...job, ...updated };
    } catch (err) {
      alert(err.message); // e.g. 409: it finished meanwhile
    }
    renderHeader();
  }

  const loadPlan = async () => {
    plan = await get(`${path}/plan`).catch(() => null);
    fill(planBox, planPanel(plan));
    renderLive();
  };

  const loadLive = async () => {
    live = await get(`${path}/live`).catch(() => null);
    renderLive();
  };

  /** Everything, or after a gap in the stream only the rows past the last one seen (all of them if it resumed). */
  const load = async (full) => {
    const after = full ? -1 : Math.max(-1, ...[...rows.values()].map((r) => r.step));
    try {
      const res = await get(`${path}?after=${after}`);
      if (job && res.job.attempt !== job.attempt && !full) return load(true);
      job = res.job;
      checkpoints = res.checkpoints;
      fill(checkpointsBox, checkpointsPanel(checkpoints));
      merge(res.metrics);
      renderHeader();
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) fill(root, h('h1', 'No such job'), h('p', `There is no job ${id}.`), h('a', { href: '#/jobs' }, 'All jobs'));
      throw err;
    }
    await Promise.all([loadPlan(), loadLive()]);
  };

  load(true).catch(() => {});
  return {
    event(name, data) {
      if (name === 'metrics' && data.jobId === id) merge(data.rows);
      else if (name === 'live' && data.jobId === id) {
        live = data;
        renderLive();
        renderHeader();
      } else if (name === 'checkpoint' && data.jobId === id) {
        checkpoints = [data.checkpoint, ...checkpoints.filter((c) => c.step !== data.checkpoint.step)].sort((a, b) => b.step - a.step);
        fill(checkpointsBox, checkpointsPanel(checkpoints));
      } else if (name === 'jobs' && job) {
        const summary = data.jobs.find((j) => j.id === id);
        if (!summary) return;
        const changed = summary.attempt !== job.attempt || summary.state !== job.state;
        job = { ...job, ...summary };
        renderHeader();
        if (changed) loadPlan(); // a new attempt is planned afresh; a finished one gains its measured step time
      }
    },
    resync: () => load(false).catch(() => {}),
    destroy() {
      lossChart.destroy();
      tokensChart.destroy();
      stepChart.destroy();
    },
  };
}

/** The pipeline bubble in ms, as the coordinator recorded it (rows from before it did: the bubble's share of the section). */
function bubbleMs(r) {
  return r.values.bubbleMs ?? (r.values.bubble ?? 0) * (r.values.pipelineMs ?? 0);
}

/** A finished or queued job has no live placement: draw the plan's (agent ids per world rank, tensor innermost). */
function layoutFromPlan(plan, nodes) {
  const chosen = plan?.chosen;
  if (!chosen) return layoutGrid(null, []);
  const { data, pipeline, tensor } = chosen.layout;
  const names = new Map(nodes.map((n) => [n.id, n.name]));
  const placement = chosen.placement.map((nodeId, rank) => {
    const pp = Math.floor((rank % (pipeline * tensor)) / tensor);
    return { rank, nodeName: names.get(nodeId) ?? nodeId, dp: Math.floor(rank / (pipeline * tensor)), pp, tp: rank % tensor, layers: chosen.stages[pp] };
  });
  return layoutGrid({ data, pipeline, tensor }, placement, undefined);
}
