/**
 * The cluster commands of the coordinator CLI (coordinator/cli/index.ts routes to them):
 *   coordinator nodes [--json]          list agents
 *   coordinator nodes revoke ID         revoke an agent's credential
 *   coordinator selfcheck [--agents N]  check every collective on a ring of the agents
 */
import { intOption } from '../../common/cli.ts';
import { describeGpu } from '../../protocol/gpu.ts';
import type { NodeView } from '../cluster/agent-hub.ts';
import type { RelayStats } from '../cluster/relay.ts';
import { printSelfcheck, type SelfcheckReport } from '../cluster/selfcheck.ts';
import type { NodeRole } from '../jobs/runner.ts';
import { str, type CliIo, type Values } from './client.ts';

export async function nodes(io: CliIo, v: Values): Promise<number> {
  const { nodes } = await io.api<{ nodes: Array<NodeView & { role: NodeRole | null; straggler: boolean; relayStats?: RelayStats | null }> }>('GET', '/api/nodes');
  if (v.json) {
    io.print(JSON.stringify(nodes, null, 2) + '\n');
    return 0;
  }
  const rows = nodes.map((n) => [
    n.id,
    n.name,
    n.status + (n.status === 'alive' && !n.connected ? ' (reconnecting)' : ''),
    n.capabilities.backend + (n.capabilities.gpu ? ` on ${describeGpu(n.capabilities.gpu)}` : ''),
    String(n.capabilities.cores),
    `${(n.capabilities.memoryBytes / 2 ** 30).toFixed(1)} GiB`,
    n.capabilities.matmulGflops.toFixed(1),
    `${(n.heartbeatAgeMs / 1000).toFixed(1)} s`,
    n.role ? `${n.role.jobId} rank ${n.role.rank} (dp ${n.role.dp}, stage ${n.role.pp}, shard ${n.role.tp})${n.straggler ? ' STRAGGLER' : ''}` : '—',
    n.peerAddress,
    reachCell(n.reach),
    relayCell(n.relayStats ?? null),
  ]);
  io.table(['ID', 'NAME', 'STATUS', 'BACKEND', 'CORES', 'MEMORY', 'GFLOP/S', 'HEARTBEAT', 'ROLE', 'PEER ADDRESS', 'LINKS', 'RELAY COST'], rows);
  return 0;
}

/** How peers link to the node: 'direct', 'relayed via coordinator' (or via the relay agent's name), 'checking', or '—' before any check. */
function reachCell(reach: NodeView['reach']): string {
  if (!reach) return '—';
  return reach.state === 'relayed' ? `relayed via ${reach.relay ?? 'coordinator'}` : reach.state;
}

/** Bytes relayed to/from the node and the relayed path's round trip (the relay's two legs: coordinator/cluster/relay.ts). */
function relayCell(s: RelayStats | null): string {
  if (!s) return '—';
  const mib = (b: number) => `${(b / 2 ** 20).toFixed(1)} MiB`;
  const rtt = s.relayedRttMs !== null ? `, rtt ${s.relayedRttMs.toFixed(1)} ms (${s.dialerLegRttMs!.toFixed(1)} + ${s.nodeLegRttMs!.toFixed(1)})` : '';
  return `${mib(s.bytesToNode)} in / ${mib(s.bytesFromNode)} out, ${s.linksOpen} open${rtt}`;
}

export async function revoke(io: CliIo, v: Values, id: string): Promise<number> {
  const { node } = await io.api<{ node: NodeView }>('POST', `/api/nodes/${encodeURIComponent(id)}/revoke`);
  if (v.json) io.print(JSON.stringify(node, null, 2) + '\n');
  else io.print(`revoked ${node.id} (${node.name}): disconnected; its node id and secret are no longer accepted\n`);
  return 0;
}

export async function selfcheck(io: CliIo, v: Values): Promise<number> {
  const agents = str(v, 'agents');
  const report = await io.api<SelfcheckReport>('POST', '/api/selfcheck', agents ? { agents: intOption(agents, 'agents', 0, 1) } : {});
  if (v.json) io.print(JSON.stringify(report, null, 2) + '\n');
  else printSelfcheck(report, (line) => io.print(line + '\n'));
  return report.ok ? 0 : 1;
}

