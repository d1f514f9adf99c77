// The dashboard's entry: login, the hash router (#/nodes, #/jobs, #/jobs/ID, #/submit, #/runs, #/models, #/gateways) and
// the live stream that keeps the open view current. Each view is `mount(root, ctx, param) → {event?, resync?,
// destroy?}`: it fetches what it shows, then hears every stream event and `resync()` after a gap in the stream.
import { connectEvents, get, post, whenUnauthorized } from './api.js';
import { fill, h } from './dom.js';
import { mountGateways } from './gateways.js';
import { mountJob } from './job-page.js';
import { mountJobs } from './jobs.js';
import { mountModels } from './models.js';
import { mountNodes } from './nodes.js';
import { mountRuns } from './runs.js';
import { mountSubmit } from './submit.js';

const VIEWS = { nodes: mountNodes, jobs: mountJobs, job: mountJob, submit: mountSubmit, models: mountModels, runs: mountRuns, gateways: mountGateways };

/** While the stream is down, views poll this often so the page still moves (EventSource keeps retrying). */
const POLL_MS = 3000;

const main = document.getElementById('main');
const nav = document.getElementById('nav');
const liveBadge = document.getElementById('live');
const logoutButton = document.getElementById('logout');

/**
 * What several views share, kept current by the stream: the nodes (with when they arrived), the jobs, and each
 * running job's latest live figures (JobLive, by job id).
 */
const store = { nodes: [], nodesAtMs: 0, jobs: [], live: new Map() };
const ctx = { store, navigate: (hash) => (location.hash = hash) };

let view = null;
let closeEvents = null;
let streamStatus = 'offline';
let poller = null;
let entered = false;

function route() {
  const [, name = 'nodes', param] = location.hash.split('/');
  const key = name === 'jobs' && param ? 'job' : name;
  const mount = VIEWS[key] ?? mountNodes;
  view?.destroy?.();
  for (const a of nav.querySelectorAll('a')) a.classList.toggle('active', a.dataset.route === (key === 'job' ? 'jobs' : key));
  main.replaceChildren();
  view = mount(main, ctx, param && decodeURIComponent(param));
}

function setStreamStatus(status) {
  streamStatus = status;
  liveBadge.dataset.state = status;
  liveBadge.textContent = status;
  liveBadge.title = status === 'live' ? 'receiving live updates' : 'the live stream is down; polling every few seconds';
}

function onEvent(name, data) {
  if (name === 'nodes') {
    store.nodes = data.nodes;
    store.nodesAtMs = Date.now();
  } else if (name === 'jobs') store.jobs = data.jobs;
  else if (name === 'live') store.live.set(data.jobId, data);
  view?.event?.(name, data);
}

async function refreshStore() {
  const [{ nodes }, { jobs }] = await Promise.all([get('/api/nodes'), get('/api/jobs')]);
  onEvent('nodes', { nodes });
  onEvent('jobs', { jobs });
}

function enter() {
  entered = true;
  nav.hidden = false;
  logoutButton.hidden = false;
  liveBadge.hidden = false;
  setStreamStatus('reconnecting');
  closeEvents = connectEvents({
    onEvent,
    onStatus: setStreamStatus,
    onOpen: () => view?.resync?.(),
  });
  poller = setInterval(() => {
    if (streamStatus !== 'live') refreshStore().then(() => view?.resync?.(), () => {});
  }, POLL_MS);
  window.addEventListener('hashchange', route);
  refreshStore().catch(() => {});
  route();
}

function leave(message) {
  entered = false;
  closeEvents?.();
  clearInterval(poller);
  window.removeEventListener('hashchange', route);
  view?.destroy?.();
  view = null;
  nav.hidden = true;
  logoutButton.hidden = true;
  liveBadge.hidden = true;
  store.nodes = [];
  store.jobs = [];
  store.live.clear();
  showLogin(message);
}

function showLogin(message) {
  const token = h('input#token', { type: 'password', name: 'token', autocomplete: 'current-password', required: true, placeholder: 'cluster token' });
  const error = h('p#login-error.error', { role: 'alert', hidden: !message }, message ?? '');
  const submit = h('button', { type: 'submit' }, 'Log in');
  const form = h('form#login-form.card.login', {
    onsubmit: async (e) => {
      e.preventDefault();
      submit.disabled = true;
      try {
        await post('/api/login', { token: token.value });
        token.value = '';
        enter();
      } catch (err) {
        error.hidden = false;
        error.textContent = err.message;
      } finally {
        submit.disabled = false;
      }
    },
  },
  h('h2', 'Log in'),
  h('p.muted', 'The cluster token printed by ', h('code', 'coordinator start'), '.'),
  h('label', { for: 'token' }, 'Cluster token'), token, error, submit);
  fill(main, form);
  token.focus();
}

logoutButton.addEventListener('click', async () => {
  await post('/api/logout').catch(() => {}); // logged out either way: the cookie is the server's to clear
  leave();
});
whenUnauthorized(() => entered && leave('Your session ended: log in again.'));

// Nothing is fetched but the session state until the user has logged in.
get('/api/session').then(
  (s) => (s.authenticated ? enter() : showLogin()),
  () => showLogin(),
);
