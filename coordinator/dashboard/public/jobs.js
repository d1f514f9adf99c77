// The jobs view: every job, newest first, with its state, progress and throughput; a click opens its page.
import { badge, card, empty, fill, h, num, table, time } from './dom.js';

export function mountJobs(root, { store }) {
  const body = h('div');
  root.append(h('h1', 'Jobs', h('a.button.title-action', { href: '#/submit' }, 'Submit a job')), card(null, body));

  const render = () => {
    const jobs = store.jobs;
    if (jobs.length === 0) return fill(body, empty('No jobs yet.'));
    fill(body, table(['Job', 'State', 'Progress', 'Tokens/s', 'Attempt', 'Model', 'Submitted'],
      jobs.map((j) => jobRow(j, store.live.get(j.id))), { class: 'jobs' }));
  };

  render();
  return {
    event: (name) => (name === 'jobs' || name === 'live') && render(),
    resync: render,
  };
}

function jobRow(j, live) {
  const href = `#/jobs/${encodeURIComponent(j.id)}`;
  return h('tr', { 'data-job-id': j.id, class: 'clickable', onclick: (e) => e.target.tagName !== 'A' && (location.hash = href) },
    h('td', h('a', { href }, j.name), h('div.muted.small', j.id)),
    h('td', h('span.job-state', { 'data-state': j.state }, badge(j.state)), h('div.muted.small', j.stateReason)),
    h('td', progress(j.step, j.totalSteps)),
    h('td.num', j.state === 'running' && live ? num(live.tokensPerS, 0) : '–'),
    h('td.num', num(j.attempt, 0)),
    h('td', j.modelVersion ? h('a', { href: '#/models' }, `${j.name}@v${j.modelVersion}`) : '–'),
    h('td', time(j.createdMs)),
  );
}

/** "step / total" with a bar; just the step while the total is not known yet. */
export function progress(step, total) {
  if (!total) return h('span.num', num(step, 0));
  return h('div.progress',
    h('span.num', `${num(step, 0)} / ${num(total, 0)}`),
    h('meter', { min: 0, max: total, value: step }));
}
