/**
 * Durable cluster state. `StateStore` is the interface the rest of the coordinator uses; `SqliteStateStore`
 * keeps it in SQLite (better-sqlite3, WAL mode, synchronous=NORMAL: a crash loses at most the last
 * transactions, never the database's consistency). `MemoryStateStore` backs unit tests.
 */
import Database from 'better-sqlite3';
import type { CapabilitiesInfo } from '../../protocol/control.ts';
import { CoordinatorError } from '../errors.ts';
import { byText } from './job-store.ts';

/** 'revoked': an operator revoked the node's credential (`coordinator nodes revoke`); final, its id is never reused. */
export type NodeStatus = 'alive' | 'dead' | 'left' | 'revoked';

export interface NodeRecord {
  id: string;
  name: string;
  status: NodeStatus;
  statusReason: string;
  capabilities: CapabilitiesInfo;
  peerAddress: string;
  agentVersion: string;
  remoteAddress: string;
  firstSeenMs: number;
  lastSeenMs: number; // last heartbeat (or hello) received, epoch ms
  secretHash: string; // sha256 of the node's reconnect secret; '' once revoked (no secret matches it)
  /** Whether other agents can dial its peer address, as last checked (coordinator/cluster/reachability.ts). */
  reach?: NodeReach;
}

/**
 * 'direct': its peer address answered the coordinator's probe (or was not checked); 'relayed': it did not, or the
 * agent said --relay-only, so links to it go through `relay`; 'checking': the probe after its hello is running.
 */
export interface NodeReach {
  state: 'checking' | 'direct' | 'relayed';
  reason: string;
  checkedAtMs: number;
  /** Who relays links to it: 'coordinator' (the only relay today). */
  relay?: string;
  /** The probe's round trip (dial, upgrade, proof), ms, when it answered. */
  probeRttMs?: number;
}

export interface NodeEvent {
  nodeId: string;
  atMs: number;
  status: NodeStatus;
  reason: string;
}

export interface StateStore {
  getMeta(key: string): string | undefined;
  setMeta(key: string, value: string): void;
  putNode(node: NodeRecord): void;
  getNode(id: string): NodeRecord | undefined;
  listNodes(): NodeRecord[];
  /** Records the change and an event in one transaction. */
  setNodeStatus(id: string, status: NodeStatus, reason: string, atMs: number): void;
  touchNode(id: string, atMs: number): void;
  /** Records the outcome of a reachability check; an unknown id changes nothing. */
  setNodeReach(id: string, reach: NodeReach): void;
  nodeEvents(id: string, limit: number): NodeEvent[];
  close(): void;
}

/** Bumped whenever #migrate gains a step; each step upgrades from the version before it. */
const SCHEMA_VERSION = 7;

export class SqliteStateStore implements StateStore {
  readonly #db: Database.Database;
  readonly #stmts;

  constructor(file: string) {
    try {
      this.#db = new Database(file);
      this.#db.pragma('journal_mode = WAL');
      this.#db.pragma('synchronous = NORMAL');
      this.#db.pragma('foreign_keys = ON');
      this.#migrate();
    } catch (err) {
      throw new CoordinatorError('CRD_ERR_STORAGE', `cannot open state database ${file}: ${(err as Error).message}`, { cause: err });
    }
    const db = this.#db;
    this.#stmts = {
      getMeta: db.prepare<[string], { value: string }>('SELECT value FROM meta WHERE key = ?'),
      setMeta: db.prepare('INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value = excluded.value'),
      putNode: db.prepare(`INSERT INTO nodes(id, name, status, status_reason, capabilities, peer_address, agent_version,
          remote_address, first_seen_ms, last_seen_ms, secret_hash, reach)
        VALUES (@id, @name, @status, @statusReason, @capabilities, @peerAddress, @agentVersion, @remoteAddress,
          @firstSeenMs, @lastSeenMs, @secretHash, @reach)
        ON CONFLICT(id) DO UPDATE SET name = excluded.name, status = excluded.status, status_reason = excluded.status_reason,
          capabilities = excluded.capabilities, peer_address = excluded.peer_address, agent_version = excluded.agent_version,
          remote_address = excluded.remote_address, last_seen_ms = excluded.last_seen_ms, secret_hash = excluded.secret_hash,
          reach = excluded.reach`),
      getNode: db.prepare<[string], NodeRow>('SELECT * FROM nodes WHERE id = ?'),
      listNodes: db.prepare<[], NodeRow>('SELECT * FROM nodes ORDER BY first_seen_ms, id'),
      setStatus: db.prepare('UPDATE nodes SET status = ?, status_reason = ? WHERE id = ?'),
      addEvent: db.prepare('INSERT INTO node_events(node_id, at_ms, status, reason) VALUES (?, ?, ?, ?)'),
      touch: db.prepare('UPDATE nodes SET last_seen_ms = ? WHERE id = ?'),
      setReach: db.prepare('UPDATE nodes SET reach = ? WHERE id = ?'),
      events: db.prepare<[string, number], { node_id: string; at_ms: number; status: NodeStatus; reason: string }>(
        'SELECT * FROM node_events WHERE node_id = ? ORDER BY id DESC LIMIT ?',
      ),
    };
  }

  #migrate(): void {
    const version = this.#db.pragma('user_version', { simple: true }) as number;
    if (version > SCHEMA_VERSION) {
      throw new Error(`database schema version ${version} is newer than this coordinator understands (${SCHEMA_VERSION}); upgrade the coordinator`);
    }
    const steps: Array<[number, string]> = [
      [
        1,
        `CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS nodes (
          id TEXT PRIMARY KEY, name TEXT NOT NULL, status TEXT NOT NULL, status_reason TEXT NOT NULL,
          capabilities TEXT NOT NULL, peer_address TEXT NOT NULL, agent_version TEXT NOT NULL,
          remote_address TEXT NOT NULL, first_seen_ms INTEGER NOT NULL, last_seen_ms INTEGER NOT NULL,
          secret_hash TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS node_events (
          id INTEGER PRIMARY KEY AUTOINCREMENT, node_id TEXT NOT NULL REFERENCES nodes(id),
          at_ms INTEGER NOT NULL, status TEXT NOT NULL, reason TEXT NOT NULL);
        CREATE INDEX IF NOT EXISTS node_events_by_node ON node_events(node_id, id);`,
      ],
      [
        2,
        `CREATE TABLE IF NOT EXISTS jobs (
          id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL,
          state_reason TEXT NOT NULL, step INTEGER NOT NULL, created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS job_metrics (
          job_id TEXT NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL, kind TEXT NOT NULL,
          at_ms INTEGER NOT NULL, "values" TEXT NOT NULL, PRIMARY KEY (job_id, kind, step));`,
      ],
      [
        3,
        `CREATE TABLE IF NOT EXISTS model_versions (
          name TEXT NOT NULL, version INTEGER NOT NULL, created_ms INTEGER NOT NULL, files TEXT NOT NULL,
          lineage TEXT NOT NULL, PRIMARY KEY (name, version));`,
      ],
      [
        4,
        `CREATE TABLE IF NOT EXISTS job_checkpoints (
          job_id TEXT NOT NULL REFERENCES jobs(id), step INTEGER NOT NULL, attempt INTEGER NOT NULL,
          files TEXT NOT NULL, created_ms INTEGER NOT NULL, PRIMARY KEY (job_id, step));
        ALTER TABLE jobs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
        ALTER TABLE jobs ADD COLUMN model_version INTEGER;`,
      ],
      [5, `ALTER TABLE jobs ADD COLUMN plan TEXT;`], // the planner's layout choice and the candidates it weighed (JSON)
      [
        6, // experiment tracking (run-store.ts): each job's code version and dataset; sweeps and their trials (coordinator/tracking/sweeps.ts)
        `CREATE TABLE IF NOT EXISTS job_runs (
          job_id TEXT PRIMARY KEY REFERENCES jobs(id), code_version TEXT NOT NULL, data TEXT);
        CREATE TABLE IF NOT EXISTS sweeps (
          id TEXT PRIMARY KEY, name TEXT NOT NULL, spec TEXT NOT NULL, state TEXT NOT NULL, state_reason TEXT NOT NULL,
          created_ms INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
        CREATE TABLE IF NOT EXISTS sweep_trials (
          sweep_id TEXT NOT NULL REFERENCES sweeps(id), idx INTEGER NOT NULL, params TEXT NOT NULL,
          job_id TEXT REFERENCES jobs(id), PRIMARY KEY (sweep_id, idx));`,
      ],
      [7, `ALTER TABLE nodes ADD COLUMN reach TEXT;`], // NodeReach as JSON: can peers dial it, or is it relayed
    ];
    for (const [to, sql] of steps) {
      if (version >= to) continue;
      this.#db.transaction(() => {
        this.#db.exec(sql);
        this.#db.pragma(`user_version = ${to}`);
      })();
    }
  }

  /** The open database, for stores of other concepts that share it (job-store.ts). */
  get database(): Database.Database {
    return this.#db;
  }

  getMeta(key: string): string | undefined {
    return this.#stmts.getMeta.get(key)?.value;
  }

  setMeta(key: string, value: string): void {
    this.#stmts.setMeta.run(key, value);
  }

  putNode(node: NodeRecord): void {
    this.#db.transaction(() => {
      const before = this.#stmts.getNode.get(node.id);
      this.#stmts.putNode.run({ ...node, capabilities: JSON.stringify(node.capabilities), reach: node.reach ? JSON.stringify(node.reach) : null });
      if (!before || before.status !== node.status) this.#stmts.addEvent.run(node.id, node.lastSeenMs, node.status, node.statusReason);
    })();
  }

  getNode(id: string): NodeRecord | undefined {
    const row = this.#stmts.getNode.get(id);
    return row && fromRow(row);
  }

  listNodes(): NodeRecord[] {
    return this.#stmts.listNodes.all().map(fromRow);
  }

  setNodeStatus(id: string, status: NodeStatus, reason: string, atMs: number): void {
    this.#db.transaction(() => {
      // An unknown id changes nothing and records nothing (as in MemoryStateStore).
      if (this.#stmts.setStatus.run(status, reason, id).changes === 0) return;
      this.#stmts.addEvent.run(id, atMs, status, reason);
    })();
  }

  touchNode(id: string, atMs: number): void {
    this.#stmts.touch.run(atMs, id);
  }

  setNodeReach(id: string, reach: NodeReach): void {
    this.#stmts.setReach.run(JSON.stringify(reach), id);
  }

  nodeEvents(id: string, limit: number): NodeEvent[] {
    return this.#stmts.events.all(id, limit).map((e) => ({ nodeId: e.node_id, atMs: e.at_ms, status: e.status, reason: e.reason }));
  }

  close(): void {
    if (this.#db.open) this.#db.close();
  }
}

interface NodeRow {
  id: string;
  name: string;
  status: NodeStatus;
  status_reason: string;
  capabilities: string;
  peer_address: string;
  agent_version: string;
  remote_address: string;
  first_seen_ms: number;
  last_seen_ms: number;
  secret_hash: string;
  reach: string | null;
}

function fromRow(row: NodeRow): NodeRecord {
  return {
    id: row.id,
    name: row.name,
    status: row.status,
    statusReason: row.status_reason,
    capabilities: JSON.parse(row.capabilities) as CapabilitiesInfo,
    peerAddress: row.peer_address,
    agentVersion: row.agent_version,
    remoteAddress: row.remote_address,
    firstSeenMs: row.first_seen_ms,
    lastSeenMs: row.last_seen_ms,
    secretHash: row.secret_hash,
    ...(row.reach ? { reach: JSON.parse(row.reach) as NodeReach } : {}),
  };
}

/** The same contract in memory, for unit tests. */
export class MemoryStateStore implements StateStore {
  readonly #meta = new Map<string, string>();
  readonly #nodes = new Map<string, NodeRecord>();
  readonly #events: NodeEvent[] = [];

  getMeta(key: string) {
    return this.#meta.get(key);
  }
  setMeta(key: string, value: string) {
    this.#meta.set(key, value);
  }
  putNode(node: NodeRecord) {
    const before = this.#nodes.get(node.id);
    const firstSeenMs = before?.firstSeenMs ?? node.firstSeenMs;
    this.#nodes.set(node.id, structuredClone({ ...node, firstSeenMs }));
    if (!before || before.status !== node.status) this.#events.push({ nodeId: node.id, atMs: node.lastSeenMs, status: node.status, reason: node.statusReason });
  }
  getNode(id: string) {
    const n = this.#nodes.get(id);
    return n && structuredClone(n);
  }
  listNodes() {
    return [...this.#nodes.values()]
      .sort((a, b) => a.firstSeenMs - b.firstSeenMs || byText(a.id, b.id))
      .map((n) => structuredClone(n));
  }
  setNodeStatus(id: string, status: NodeStatus, reason: string, atMs: number) {
    const n = this.#nodes.get(id);
    if (!n) return;
    n.status = status;
    n.statusReason = reason;
    this.#events.push({ nodeId: id, atMs, status, reason });
  }
  touchNode(id: string, atMs: number) {
    const n = this.#nodes.get(id);
    if (n) n.lastSeenMs = atMs;
  }
  setNodeReach(id: string, reach: NodeReach) {
    const n = this.#nodes.get(id);
    if (n) n.reach = structuredClone(reach);
  }
  nodeEvents(id: string, limit: number) {
    return this.#events.filter((e) => e.nodeId === id).reverse().slice(0, limit);
  }
  close() {}
}
