// The nodes view: every agent the coordinator knows, what it is and what it is doing. Dead agents and slow ones
// (the straggler of a running job, or far below the fastest agent's measured matmul rate) are marked by row class.
// The Links column says whether peers dial an agent directly or through a relay, the coordinator or an agent (it could not be
// dialled: behind NAT, or --relay-only), and what relaying has cost: bytes both ways and the relayed round trip.
import { age, badge, bytes, card, empty, fill, h, num, table } from './dom.js';

/** An agent measuring below this share of the fastest alive agent's GFLOP/s is marked slow. */
const SLOW_SHARE = 0.5;
/** An alive agent whose last heartbeat is older than this is shown as late (the sweep declares it dead later). */
const LATE_HEARTBEAT_MS = 5000;

export function mountNodes(root, { store }) {
  const summary = h('p.summary');
  const body = h('div');
  root.append(h('h1', 'Nodes'), summary, card(null, body));

  const render = () => {
    const nodes = store.nodes;
    const alive = nodes.filter((n) => n.status === 'alive');
    const fastest = Math.max(0, ...alive.map((n) => n.capabilities?.matmulGflops ?? 0));
    const elapsed = Date.now() - store.nodesAtMs; // heartbeat ages were measured when the list arrived
    const revoked = nodes.filter((n) => n.status === 'revoked').length;
    fill(summary, `${alive.length} alive · ${nodes.filter((n) => n.status === 'dead').length} dead · ${nodes.filter((n) => n.status === 'left').length} left` +
      (revoked ? ` · ${revoked} revoked` : ''));
    if (nodes.length === 0) return fill(body, empty('No agents have joined yet: run node-agent join on a machine.'));
    fill(body, table(
      ['Agent', 'Status', 'Connected', 'Backend', 'Cores', 'Memory', 'Matmul', 'Heartbeat', 'Role', 'Links'],
      nodes.map((n) => nodeRow(n, n.heartbeatAgeMs + elapsed, fastest)),
      { class: 'nodes' },
    ));
  };

  render();
  const ticker = setInterval(render, 1000); // heartbeat ages count on between updates
  return {
    event: (name) => name === 'nodes' && render(),
    destroy: () => clearInterval(ticker),
  };
}

function nodeRow(n, heartbeatAgeMs, fastestGflops) {
  const caps = n.capabilities ?? {};
  const slow = n.status === 'alive' && fastestGflops > 0 && caps.matmulGflops < SLOW_SHARE * fastestGflops;
  const late = n.status === 'alive' && heartbeatAgeMs > LATE_HEARTBEAT_MS;
  const classes = [`node-${n.status}`, n.straggler && 'node-straggler', slow && 'node-slow'].filter(Boolean).join(' ');
  return h('tr', { class: classes, 'data-node-id': n.id },
    h('td', h('strong', n.name), h('div.muted.small', n.id)),
    h('td', badge(n.status), n.straggler ? badge('straggler') : null, slow ? badge('slow') : null,
      n.statusReason ? h('div.muted.small', n.statusReason) : null),
    h('td', n.connected ? 'yes' : h('span.warn', 'no')),
    h('td', caps.backend ?? '–', caps.gpu ? gpuCell(caps.gpu) : null),
    h('td.num', num(caps.cores, 0)),
    h('td.num', bytes(caps.memoryBytes), h('div.muted.small', `${bytes(caps.freeMemoryBytes)} free`)),
    h('td.num', `${num(caps.matmulGflops, 1)} GFLOP/s`),
    h('td.num', { class: late ? 'warn' : undefined }, age(heartbeatAgeMs)),
    h('td', roleCell(n.role)),
    h('td', linksCell(n.reach, n.relayStats)),
  );
}

/** Direct or relayed (and why), with the relay's bytes and round trip (coordinator/cluster/relay.ts). */
function linksCell(reach, stats) {
  if (!reach) return h('span.muted', '–');
  const state = reach.state === 'relayed' ? badge(`relayed via ${reach.relay ?? 'coordinator'}`, 'relayed') : badge(reach.state);
  const cost = stats
    ? h('div.small', `${bytes(stats.bytesToNode)} in · ${bytes(stats.bytesFromNode)} out · ${stats.linksOpen} open` +
      (stats.relayedRttMs !== null ? ` · rtt ${num(stats.relayedRttMs, 1)} ms` : ''))
    : null;
  return [state, h('div.muted.small', { title: reach.reason }, reach.reason), cost];
}

/** The adapter a webgpu agent computes on: name, Dawn's backend, whether it is software, its binding limit. */
function gpuCell(g) {
  const name = [g.vendor, g.description || g.architecture].filter(Boolean).join(' ') || 'unknown adapter';
  return h('div.muted.small', { title: `maxBufferSize ${bytes(g.maxBufferSize)}, maxStorageBufferBindingSize ${bytes(g.maxStorageBufferBindingSize)}` },
    `${name} · ${g.dawnBackend}${g.software ? ' · software' : ''} · binds ${bytes(g.maxStorageBufferBindingSize)}`);
}

function roleCell(role) {
  if (!role) return h('span.muted', 'idle');
  const [first, end] = role.layers ?? [];
  return [
    h('a', { href: `#/jobs/${encodeURIComponent(role.jobId)}` }, role.jobId),
    h('div.small', `rank ${role.rank} · data ${role.dp} · pipe ${role.pp} · tensor ${role.tp}`),
    first !== undefined ? h('div.muted.small', `layers ${first}–${end - 1}`) : null,
  ];
}
