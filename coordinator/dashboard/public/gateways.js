// The gateways view: each inference gateway that announced itself, its deployments (primary, A/B arms, shadows),
// each shadow's comparison with the primary and its SPRT verdict, and buttons to promote a version or roll back.
// The coordinator relays these calls to the gateway's admin API, so the page never holds a gateway's admin key.
import { get, post } from './api.js';
import { age, badge, card, empty, fill, h, ms, num, pct, table } from './dom.js';

/** Shadow statistics move with traffic, which sends no event: re-read them this often while the view is open. */
const REFRESH_MS = 5000;
const REASON = 'from the dashboard';

export function mountGateways(root) {
  const body = h('div');
  const error = h('p.error', { role: 'alert', hidden: true });
  root.append(h('h1', 'Gateways'), error, body);

  const act = async (path, payload, question) => {
    if (!confirm(question)) return;
    try {
      await post(path, payload);
      error.hidden = true;
    } catch (err) {
      error.hidden = false;
      error.textContent = err.message;
    }
    await load();
  };

  const load = async () => {
    const { gateways } = await get('/api/gateways');
    if (gateways.length === 0) return fill(body, card(null, empty('No gateway has announced itself to this coordinator yet.')));
    const cards = await Promise.all(gateways.map((g) => gatewayCard(g, act)));
    fill(body, cards);
  };

  load().catch(() => {});
  const timer = setInterval(() => load().catch(() => {}), REFRESH_MS);
  return {
    event: (name) => name === 'gateways' && load().catch(() => {}),
    resync: () => load().catch(() => {}),
    destroy: () => clearInterval(timer),
  };
}

async function gatewayCard(g, act) {
  const base = `/api/gateways/${encodeURIComponent(g.name)}/deployments`;
  const head = h('h2', g.name, ' ', badge(g.alive ? 'alive' : 'silent', g.alive ? 'alive' : 'dead'),
    h('span.muted.small', ` ${g.url} · seen ${age(Date.now() - g.lastSeenMs)} ago`));
  if (!g.alive) return card(null, head);
  let deployments;
  try {
    ({ deployments } = await get(base));
  } catch (err) {
    return card(null, head, h('p.error', err.message));
  }
  if (deployments.length === 0) return card(null, head, empty('No deployments.'));
  const sections = await Promise.all(deployments.map(async (d) => {
    const path = `${base}/${encodeURIComponent(d.name)}`;
    const comparison = await get(`${path}/comparison`).catch(() => null);
    return deploymentSection(d, comparison, path, act);
  }));
  return card(null, head, sections);
}

const label = (v) => `${v.model}@v${v.version}`;

function deploymentSection(d, comparison, path, act) {
  const promote = (version) => h('button.small', {
    type: 'button',
    'data-promote': version,
    onclick: () => act(`${path}/promote`, { version, reason: REASON }, `Make ${version} the primary of ${d.name}?`),
  }, 'Promote');
  const armWeight = d.arms.reduce((sum, a) => sum + a.weight, 0);
  const bySnapshot = new Map((comparison?.shadows ?? []).map((s) => [s.version, s]));
  return h('div.deployment', { 'data-deployment': d.name },
    h('h3', d.name,
      h('button.small.secondary', {
        type: 'button',
        'data-testid': 'rollback',
        onclick: () => act(`${path}/rollback`, { reason: REASON }, `Roll ${d.name} back to its previous primary?`),
      }, 'Roll back')),
    table(['Role', 'Version', 'Traffic', ''], [
      ['primary', h('strong', label(d.primary)), pct(1 - armWeight), ''],
      ...d.arms.map((a) => ['A/B arm', label(a), pct(a.weight), promote(label(a))]),
      ...d.shadows.map((s) => ['shadow', label(s), `${num(s.percent, 0)}% mirrored`, promote(label(s))]),
    ], { class: 'deployment-versions' }),
    d.shadows.length ? shadowTable(d.shadows.map((s) => bySnapshot.get(label(s))).filter(Boolean)) : null,
    comparison?.guard ? guardLine(comparison.guard) : null);
}

/** Per shadow: how its answers compare with the primary's and what the SPRT concludes so far. */
function shadowTable(snapshots) {
  if (snapshots.length === 0) return empty('No comparisons yet.');
  return table(['Shadow', 'Mirrored', 'Dropped', 'Compared', 'Identical', 'Token agreement', 'Log-prob diff', 'Latency diff (mean / p99)', 'SPRT'],
    snapshots.map((s) => {
      const c = s.comparison;
      const dropped = Object.values(s.dropped ?? {}).reduce((a, b) => a + b, 0);
      return [
        s.version,
        num(s.offered, 0),
        num(dropped, 0),
        num(c.compared, 0),
        pct(c.identicalRate),
        pct(c.meanTokenAgreement),
        c.meanLogprobDiff === null ? '–' : `${num(c.meanLogprobDiff, 3)} nats`,
        `${ms(c.meanLatencyDiffMs)} / ${ms(c.p99LatencyDiffMs)}`,
        h('span', badge(s.decision.verdict), h('div.muted.small', `n ${s.decision.n}, LLR ${num(s.decision.llr, 2)}`)),
      ];
    }), { class: 'comparison' });
}

function guardLine(g) {
  return h('p.guard', `Guard watching since ${new Date(g.since).toLocaleTimeString('en-GB')} (window ${g.windowS} s): `,
    `${g.requests} requests, ${g.errors} errors, p99 ${ms(g.p99Ms)}; rolls back to ${g.previous} if a threshold is crossed.`);
}
