/**
 * Groups of agents and the collectives run on them. The coordinator only orchestrates: it picks members, issues a
 * group token, tells each agent its rank, its neighbours and the group's rings, and collects results. The data
 * itself moves agent-to-agent over the links the agents open to each other. A group is one ring ('world') unless
 * `form` is given rings: a job with data × pipeline × tensor parallelism has one per replica set, stage pair and
 * shard set (protocol/layout.ts).
 *
 * A member that other agents cannot dial (agent-hub.ts checks at join; NodeReach 'relayed') is given to its
 * predecessors with a relay ticket instead of a dialable address: they dial the coordinator's relay (relay.ts),
 * which asks the member to open its side. The ticket is one per group, shared by its members, and lets them through
 * to the group's relayed members only, until the group is released. Everyone else links directly, as before.
 *
 * Who relays: with `--relay agent` (the default) one of the group's members that can be dialled (relay-choice.ts
 * says which and why), else an idle agent that can (told by `relay.grant`), on its peer port's /ws/relay
 * (node-agent/agent-relay.ts); the coordinator only when none can, or with `--relay coordinator`. The relay agent's assignment carries `relayFor` (the ticket and its targets); it
 * asks us (`relay.request`) to send a target `relay.open` naming its URL, since only we can reach the target.
 * Long: forming a group, its relay tickets and the collectives run on it all read the one table of live groups.
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { assignedRings, ringProblems, type AgentMessage, type CollectiveOp, type CollectiveResult, type RingSpecT } from '../../protocol/control.ts';
import type { Logger } from '../../common/log.ts';
import type { AgentHub } from './agent-hub.ts';
import type { CoordinatorConfig } from '../config.ts';
import { CoordinatorError } from '../errors.ts';
import type { CoordinatorMetrics } from '../metrics.ts';
import { pickRelayAgent } from './relay-choice.ts';
import { relayUrlOn, sha256 } from '../../common/relay-endpoint.ts';

export interface GroupMember {
  rank: number;
  nodeId: string;
  name: string;
  address: string;
  /** Nobody can dial it: its predecessors reach it through this relay ('coordinator' or the relay agent's name). Absent: linked directly. */
  relay?: string;
}

export interface GroupInfo {
  id: string;
  size: number;
  segmentBytes: number;
  state: 'forming' | 'ready' | 'failed' | 'released';
  error?: string;
  members: GroupMember[];
  /** The rings among the members, as group ranks in ring order (the one 'world' ring when none were asked for). */
  rings: RingSpecT[];
  createdAtMs: number;
}

export interface RunSpec {
  op: CollectiveOp;
  elements: number; // float32 elements per rank
  seed: number;
  root?: number;
  repeats: number;
  verify: boolean;
  returnResult: boolean;
}

export interface RankResult {
  rank: number;
  nodeId: string;
  ok: boolean;
  error?: string;
  ms: number[];
  digest: string;
  maxAbsErr?: number;
}

export interface RunReport {
  runId: string;
  groupId: string;
  op: CollectiveOp;
  elements: number;
  bytes: number; // per rank
  ok: boolean;
  /** Per repeat, the slowest rank's time: a collective is done when its last rank is. */
  msPerRepeat: number[];
  ranks: RankResult[];
  /** Rank 0's result vector, when asked for. */
  result?: number[];
  /** The results of every rank, by rank, when asked for. */
  results?: number[][];
}

interface Forming {
  pending: Set<number>;
  resolve(): void;
  reject(err: Error): void;
}

interface Running {
  spec: RunSpec;
  results: Map<number, RankResult>;
  vectors: Map<number, number[]>;
  resolve(report: RunReport): void;
  reject(err: Error): void;
  groupId: string;
}

export class GroupManager {
  readonly #hub: AgentHub;
  readonly #cfg: Readonly<CoordinatorConfig>;
  readonly #log: Logger;
  readonly #metrics: CoordinatorMetrics;
  readonly #groups = new Map<string, GroupInfo>();
  readonly #forming = new Map<string, Forming>();
  readonly #running = new Map<string, Running>(); // by runId
  readonly #busy = new Set<string>(); // groups with a run in flight
  /** Per group with relayed members: the sha256 of its relay ticket and the members it lets dialers through to. */
  readonly #relayTickets = new Map<string, { hash: Buffer; targets: ReadonlySet<string>; agent?: { nodeId: string; url: string; member: boolean } }>();
  /** Per relayed node: the agent last picked to relay its links (whose `relay.stats` about it are believed). */
  readonly #agentRelayOf = new Map<string, string>();

  constructor(hub: AgentHub, cfg: Readonly<CoordinatorConfig>, log: Logger, metrics: CoordinatorMetrics) {
    this.#hub = hub;
    this.#cfg = cfg;
    this.#log = log;
    this.#metrics = metrics;
    hub.onAgentMessage((nodeId, msg, attachment) => this.#onMessage(nodeId, msg, attachment));
    hub.onNodeDown((nodeId, reason) => this.#onNodeDown(nodeId, reason));
  }

  list(): GroupInfo[] {
    return [...this.#groups.values()];
  }

  /**
   * The group whose relay ticket `ticket` is, when the group is live, relayed by the coordinator, and `to` is one of
   * its relayed members (a group an agent relays has no business at the coordinator's relay).
   */
  ticketGroup(ticket: string, to: string): string | undefined {
    const hash = sha256(ticket);
    for (const [groupId, t] of this.#relayTickets) {
      if (t.agent) continue;
      const state = this.#groups.get(groupId)?.state;
      if ((state === 'forming' || state === 'ready') && timingSafeEqual(hash, t.hash) && t.targets.has(to)) return groupId;
    }
    return undefined;
  }

  /** Whether `relayNodeId` is the agent last picked to relay links to `target` (its reports about it count). */
  isAgentRelayOf(relayNodeId: string, target: string): boolean {
    return this.#agentRelayOf.get(target) === relayNodeId;
  }

  get(id: string): GroupInfo {
    const g = this.#groups.get(id);
    if (!g) throw new CoordinatorError('CRD_ERR_NOT_FOUND', `no group ${id}`);
    return g;
  }

  /**
   * Forms a group of `size` available agents (or exactly `nodeIds`, ranked in that order) with `rings` among them
   * (default: one ring 'world' of every rank in order) and waits until every member has linked all its rings.
   */
  async form(opts: {
    size?: number;
    nodeIds?: string[];
    segmentBytes: number;
    rings?: ReadonlyArray<{ readonly id: string; readonly members: readonly number[] }>;
  }): Promise<GroupInfo> {
    const available = this.#hub.availableNodes();
    let chosen = available;
    if (opts.nodeIds) {
      const missing = opts.nodeIds.filter((id) => !available.some((n) => n.id === id));
      if (missing.length) throw new CoordinatorError('CRD_ERR_NOT_ENOUGH_NODES', `not alive and connected: ${missing.join(', ')}`);
      chosen = opts.nodeIds.map((id) => available.find((n) => n.id === id)!);
    } else if (opts.size !== undefined) {
      if (opts.size > available.length) {
        throw new CoordinatorError('CRD_ERR_NOT_ENOUGH_NODES', `asked for ${opts.size} agents, ${available.length} alive and connected; start more agents with 'node-agent join'`);
      }
      chosen = available.slice(0, opts.size);
    }
    if (chosen.length === 0) throw new CoordinatorError('CRD_ERR_NOT_ENOUGH_NODES', "no agents are connected; start one with 'node-agent join'");
    const rings = opts.rings?.map((r) => ({ id: r.id, members: [...r.members] }));
    if (rings) {
      const problems = ringProblems(rings, chosen.length);
      if (problems.length) throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `bad rings for a group of ${chosen.length}: ${problems[0]}`, { details: problems });
    }

    // Whether a member can be dialled is learned just after it joins: wait for that (at most a probe's timeout).
    await this.#hub.reachSettled(chosen.map((n) => n.id));
    const reach = new Map(this.#hub.availableNodes().map((n) => [n.id, n.reach]));
    const cores = new Map(chosen.map((n) => [n.id, n.capabilities?.cores ?? 1])); // (test fakes may carry none)
    const id = `g-${randomBytes(6).toString('hex')}`;
    const token = randomBytes(24).toString('base64url');
    const members: GroupMember[] = chosen.map((n, rank) => {
      const r = reach.get(n.id);
      return { rank, nodeId: n.id, name: n.name, address: n.peerAddress, ...(r?.state === 'relayed' ? { relay: r.relay ?? 'coordinator' } : {}) };
    });
    const relayed = members.filter((m) => m.relay !== undefined);
    const ticket = relayed.length ? randomBytes(24).toString('base64url') : undefined;
    const relayAgent = relayed.length && this.#cfg.relay === 'agent'
      ? pickRelayAgent(members.map((m) => ({ ...m, reach: reach.get(m.nodeId), cores: cores.get(m.nodeId) ?? 1 }))) ?? this.#idleRelay(chosen.map((n) => n.id))
      : undefined;
    const agentRelay = relayAgent ? { nodeId: relayAgent.nodeId, url: relayUrlOn(relayAgent.address), member: members.some((m) => m.nodeId === relayAgent.nodeId) } : undefined;
    for (const m of relayed) {
      if (relayAgent) m.relay = relayAgent.name;
      if (relayAgent) this.#agentRelayOf.set(m.nodeId, relayAgent.nodeId);
      else this.#agentRelayOf.delete(m.nodeId);
    }
    if (ticket) {
      this.#relayTickets.set(id, { hash: sha256(ticket), targets: new Set(relayed.map((m) => m.nodeId)), ...(agentRelay ? { agent: agentRelay } : {}) });
    }
    const info: GroupInfo = {
      id,
      size: members.length,
      segmentBytes: opts.segmentBytes,
      state: 'forming',
      members,
      rings: assignedRings({ size: members.length, rings }),
      createdAtMs: Date.now(),
    };
    this.#groups.set(id, info);
    const ready = new Promise<void>((resolve, reject) => this.#forming.set(id, { pending: new Set(members.map((m) => m.rank)), resolve, reject }));
    const peers = members.map(({ rank, nodeId, address, relay }) => ({
      rank, nodeId, address, ...(relay && ticket ? { relay: { ticket, ...(agentRelay ? { url: agentRelay.url } : {}) } } : {}),
    }));
    // The relay agent first, so that its grant is likely in place before dialers reach it (they retry its 401 anyway).
    if (ticket && agentRelay && !agentRelay.member) this.#hub.send(agentRelay.nodeId, { type: 'relay.grant', groupId: id, ticket, targets: relayed.map((r) => r.nodeId) });
    const order = agentRelay ? [...members].sort((a, b) => Number(b.nodeId === agentRelay.nodeId) - Number(a.nodeId === agentRelay.nodeId)) : members;
    for (const m of order) {
      this.#hub.send(m.nodeId, {
        type: 'group.assign',
        groupId: id,
        token,
        rank: m.rank,
        size: members.length,
        peers,
        segmentBytes: opts.segmentBytes,
        ...(rings ? { rings } : {}),
        ...(ticket && agentRelay?.nodeId === m.nodeId ? { relayFor: { ticket, targets: relayed.map((r) => r.nodeId) } } : {}),
      });
    }
    try {
      await withTimeout(ready, this.#cfg.groupFormTimeoutMs, () => `group ${id} did not form within ${this.#cfg.groupFormTimeoutMs} ms`);
      info.state = 'ready';
      this.#log.info(`group ${id} ready: ${members.map((m) => `${m.rank}:${m.nodeId}${m.relay ? ` (relayed via ${m.relay})` : ''}`).join(' → ')}`);
      return info;
    } catch (err) {
      this.release(id); // tells the members to drop whatever links they made
      info.state = 'failed';
      info.error = (err as Error).message;
      throw err;
    } finally {
      this.#forming.delete(id);
    }
  }

  /** Runs one collective on every rank of a ready group and gathers the per-rank results. */
  async run(groupId: string, spec: RunSpec): Promise<RunReport> {
    const info = this.get(groupId);
    if (info.state !== 'ready') throw new CoordinatorError('CRD_ERR_GROUP_FAILED', `group ${groupId} is ${info.state}${info.error ? ` (${info.error})` : ''}`);
    if (this.#busy.has(groupId)) throw new CoordinatorError('CRD_ERR_GROUP_FAILED', `group ${groupId} is running another collective; runs on one group are sequential`);
    if (spec.root !== undefined && spec.root >= info.size) {
      throw new CoordinatorError('CRD_ERR_BAD_REQUEST', `root ${spec.root} is not a rank of a group of ${info.size}`, { details: [`/root must be < ${info.size}`] });
    }
    const runId = `r-${randomBytes(6).toString('hex')}`;
    this.#busy.add(groupId);
    const done = new Promise<RunReport>((resolve, reject) =>
      this.#running.set(runId, { spec, results: new Map(), vectors: new Map(), resolve, reject, groupId }),
    );
    try {
      for (const m of info.members) this.#hub.send(m.nodeId, { type: 'collective.run', groupId, runId, ...spec });
      const report = await withTimeout(done, this.#cfg.collectiveTimeoutMs, () => `${spec.op} ${runId} did not finish within ${this.#cfg.collectiveTimeoutMs} ms`);
      this.#metrics.collectiveRuns.inc({ op: spec.op, outcome: report.ok ? 'ok' : 'failed' });
      for (const ms of report.msPerRepeat) this.#metrics.collectiveSeconds.observe({ op: spec.op }, ms / 1000);
      return report;
    } catch (err) {
      this.#metrics.collectiveRuns.inc({ op: spec.op, outcome: 'failed' });
      // A run that failed part-way leaves the ring in an unknown state: release it so nobody reuses it.
      this.release(groupId);
      info.state = 'failed';
      info.error = (err as Error).message;
      throw err instanceof CoordinatorError ? err : new CoordinatorError('CRD_ERR_TIMEOUT', (err as Error).message, { cause: err });
    } finally {
      this.#running.delete(runId);
      this.#busy.delete(groupId);
    }
  }

  release(groupId: string): void {
    const info = this.#groups.get(groupId);
    if (!info || info.state === 'released') return;
    info.state = 'released';
    const relay = this.#relayTickets.get(groupId)?.agent;
    this.#relayTickets.delete(groupId);
    for (const m of info.members) {
      if (this.#hub.isConnected(m.nodeId)) this.#hub.send(m.nodeId, { type: 'group.release', groupId });
    }
    // An idle agent relaying for the group holds only the grant: release ends it too.
    if (relay && !relay.member && this.#hub.isConnected(relay.nodeId)) this.#hub.send(relay.nodeId, { type: 'group.release', groupId });
  }

  #onMessage(nodeId: string, msg: AgentMessage, attachment: Buffer | undefined): void {
    switch (msg.type) {
      case 'group.ready':
      case 'group.failed': {
        const forming = this.#forming.get(msg.groupId);
        const member = this.#groups.get(msg.groupId)?.members[msg.rank];
        if (!forming || member?.nodeId !== nodeId) return; // late or foreign: nothing waits for it
        if (msg.type === 'group.failed') forming.reject(new CoordinatorError('CRD_ERR_GROUP_FAILED', `rank ${msg.rank} (${nodeId}) could not link: ${msg.error}`));
        else {
          forming.pending.delete(msg.rank);
          if (forming.pending.size === 0) forming.resolve();
        }
        return;
      }
      case 'collective.result':
        return this.#onResult(nodeId, msg, attachment);
      case 'relay.request':
        return this.#onRelayRequest(nodeId, msg);
      default:
        return; // job messages are the job runner's
    }
  }

  #onResult(nodeId: string, msg: CollectiveResult, attachment: Buffer | undefined): void {
    const run = this.#running.get(msg.runId);
    const info = this.#groups.get(msg.groupId);
    if (!run || !info || run.groupId !== msg.groupId || info.members[msg.rank]?.nodeId !== nodeId) return;
    const { rank, ok, error, ms, digest, maxAbsErr } = msg;
    run.results.set(rank, { rank, nodeId, ok, ms, digest, ...(error ? { error } : {}), ...(maxAbsErr !== undefined ? { maxAbsErr } : {}) });
    if (attachment && attachment.byteLength % 4 === 0) {
      run.vectors.set(rank, Array.from(new Float32Array(attachment.buffer.slice(attachment.byteOffset, attachment.byteOffset + attachment.byteLength))));
    }
    if (run.results.size < info.size) return;
    const ranks = [...run.results.values()].sort((a, b) => a.rank - b.rank);
    const repeats = Math.max(0, ...ranks.map((r) => r.ms.length));
    const msPerRepeat = Array.from({ length: repeats }, (_, i) => Math.max(...ranks.map((r) => r.ms[i] ?? 0)));
    const report: RunReport = {
      runId: msg.runId,
      groupId: msg.groupId,
      op: run.spec.op,
      elements: run.spec.elements,
      bytes: run.spec.elements * 4,
      ok: ranks.every((r) => r.ok),
      msPerRepeat,
      ranks,
    };
    if (run.spec.returnResult) {
      report.results = ranks.map((r) => run.vectors.get(r.rank) ?? []);
      report.result = report.results[0];
    }
    run.resolve(report);
  }

  /**
   * An agent relay asks us to tell a target to call it back. Only the group's relay agent may ask, only for the
   * group's relayed members, while the group lives; anything else is ignored (its dialer then gets 503 in time).
   */
  #onRelayRequest(nodeId: string, msg: Extract<AgentMessage, { type: 'relay.request' }>): void {
    const t = this.#relayTickets.get(msg.groupId);
    const state = this.#groups.get(msg.groupId)?.state;
    if (!t?.agent || t.agent.nodeId !== nodeId || !t.targets.has(msg.to) || (state !== 'forming' && state !== 'ready')) {
      this.#log.warn(`node ${nodeId} asked to relay to ${msg.to} in group ${msg.groupId}, which it does not relay for; ignored`);
      return;
    }
    if (!this.#hub.isConnected(msg.to)) return;
    this.#hub.send(msg.to, { type: 'relay.open', session: msg.session, key: msg.key, groupId: msg.groupId, url: t.agent.url });
  }

  /** When no member can relay: an idle agent that can be dialled (in no live group, not relaying for one), if any. */
  #idleRelay(memberIds: readonly string[]): { nodeId: string; name: string; address: string } | undefined {
    const busy = new Set(memberIds);
    for (const info of this.#groups.values()) {
      if (info.state !== 'forming' && info.state !== 'ready') continue;
      for (const m of info.members) busy.add(m.nodeId);
      const relay = this.#relayTickets.get(info.id)?.agent;
      if (relay) busy.add(relay.nodeId);
    }
    const idle = this.#hub.availableNodes().filter((n) => !busy.has(n.id));
    return pickRelayAgent(idle.map((n) => ({ nodeId: n.id, name: n.name, address: n.peerAddress, reach: n.reach, cores: n.capabilities?.cores ?? 1 })));
  }

  #onNodeDown(nodeId: string, reason: string): void {
    for (const info of this.#groups.values()) {
      const isRelay = this.#relayTickets.get(info.id)?.agent?.nodeId === nodeId; // its relayed links die with it
      if (info.state === 'released' || info.state === 'failed' || !(isRelay || info.members.some((m) => m.nodeId === nodeId))) continue;
      const err = new CoordinatorError('CRD_ERR_GROUP_FAILED', `${isRelay ? 'relay agent' : 'member'} ${nodeId} of group ${info.id} went down: ${reason}`);
      this.#forming.get(info.id)?.reject(err);
      for (const run of this.#running.values()) if (run.groupId === info.id) run.reject(err);
    }
  }
}

function withTimeout<T>(p: Promise<T>, ms: number, message: () => string): Promise<T> {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new CoordinatorError('CRD_ERR_TIMEOUT', message())), ms);
    p.then(
      (v) => (clearTimeout(t), resolve(v)),
      (e) => (clearTimeout(t), reject(e)),
    );
  });
}

/** sha256 (hex) of a float32 vector's bytes, as agents report their results. */
export function digestOf(values: Float32Array): string {
  return createHash('sha256').update(new Uint8Array(values.buffer, values.byteOffset, values.byteLength)).digest('hex');
}
