/**
 * Starts a real local cluster — one coordinator process and N agent processes on loopback — and hands back a
 * small API client. Used by the demo, the benchmarks and the integration tests, so they all exercise the
 * processes a user runs. Every process is killed by stop(), and on exit of this process.
 * MESHTRAIN_AGENT_NODE_ARGS (e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof") adds node flags to every agent, for
 * profiling the data plane.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randomBytes } from 'node:crypto';
import { createInterface } from 'node:readline';
import { fetchTrusting, loadTrust } from '../common/tls.ts';

const ROOT = new URL('..', import.meta.url).pathname;
const COORDINATOR = join(ROOT, 'bin/coordinator.js');
const AGENT = join(ROOT, 'bin/node-agent.js');

export interface ClusterOptions {
  agents: number;
  dataDir?: string; // default: a fresh temporary folder, removed by stop()
  token?: string;
  heartbeatMs?: number;
  heartbeatTimeoutMs?: number;
  agentArgs?: string[]; // extra flags for every agent
  logLevel?: string; // LOG_LEVEL of the children (default: warn)
  /** Where the children's stderr goes: 'inherit' shows their logs, 'ignore' drops them, 'capture' keeps them. */
  stderr?: 'inherit' | 'ignore' | 'capture';
  /** Extra environment of every child (on top of this process's), e.g. OTEL_* to trace the cluster. */
  env?: NodeJS.ProcessEnv;
  /** Extra flags for the coordinator (`coordinator start …`). */
  coordinatorArgs?: string[];
  /**
   * Serve the coordinator over HTTPS/WSS with this certificate and key (PEM paths); `api` and every agent trust
   * `ca` (agents get --ca). The URLs become https:// and wss://.
   */
  tls?: { cert: string; key: string; ca: string };
  /** Address the coordinator listens on and agents dial (default 127.0.0.1), e.g. a bridge's for agents in namespaces. */
  coordinatorHost?: string;
}

/** Where and how one agent runs (startAgent's third argument). */
export interface AgentPlacement {
  /** argv run before node, e.g. ['ip', 'netns', 'exec', 'ns0'] for an agent in a network namespace. */
  exec?: readonly string[];
  /** --peer-listen (default 127.0.0.1). */
  peerListen?: string;
}

export interface Proc {
  child: ChildProcess;
  output: string[]; // captured stdout+stderr lines (stderr only when captured)
  exited: Promise<number | null>;
}

export interface LocalCluster {
  url: string; // http://127.0.0.1:PORT (https:// with `tls`)
  wsUrl: string;
  /** fetch that trusts the cluster's CA (plain fetch without `tls`). */
  fetch: typeof fetch;
  port: number;
  token: string;
  dataDir: string;
  coordinator: Proc;
  agents: Proc[];
  api<T = unknown>(method: string, path: string, body?: unknown): Promise<T>;
  startAgent(name: string, extraArgs?: string[], placement?: AgentPlacement): Proc;
  waitForNodes(alive: number, timeoutMs?: number): Promise<void>;
  startCoordinator(): Promise<void>;
  stop(): Promise<void>;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export function spawnProc(args: string[], opts: { env?: NodeJS.ProcessEnv; stderr: 'inherit' | 'ignore' | 'capture'; exec?: readonly string[] }): Proc {
  // `ip netns exec` execs its command, so the child's pid (and its signals) are node's own.
  const [cmd, ...argv] = [...(opts.exec ?? []), process.execPath, ...args];
  const child = spawn(cmd!, argv, {
    stdio: ['ignore', 'pipe', opts.stderr === 'capture' ? 'pipe' : opts.stderr],
    env: { ...process.env, ...opts.env },
  });
  live.add(child);
  const output: string[] = [];
  createInterface({ input: child.stdout! }).on('line', (l) => output.push(l));
  if (child.stderr) createInterface({ input: child.stderr }).on('line', (l) => output.push(l));
  const exited = new Promise<number | null>((resolve) =>
    child.once('exit', (code, signal) => {
      live.delete(child);
      resolve(code ?? (signal ? 128 : null));
    }),
  );
  return { child, output, exited };
}

export async function waitForLine(proc: Proc, pattern: RegExp, timeoutMs: number): Promise<RegExpMatchArray> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    for (const line of proc.output) {
      const m = pattern.exec(line);
      if (m) return m;
    }
    if (proc.child.exitCode !== null) throw new Error(`process exited (${proc.child.exitCode}) before printing ${pattern}:\n${proc.output.join('\n')}`);
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${pattern}:\n${proc.output.join('\n')}`);
    await new Promise((r) => setTimeout(r, 25));
  }
}

export async function startCluster(opts: ClusterOptions): Promise<LocalCluster> {
  const ownDir = opts.dataDir === undefined;
  const dataDir = opts.dataDir ?? mkdtempSync(join(tmpdir(), 'meshtrain-'));
  const token = opts.token ?? randomBytes(16).toString('hex');
  // The cluster's agents take turns measuring themselves (node-agent/compute/host-lock.ts), among themselves only.
  const env = { MESHTRAIN_MEASURE_LOCK: join(dataDir, 'measure.lock'), ...opts.env, LOG_LEVEL: opts.logLevel ?? 'warn' };
  const stderr = opts.stderr ?? 'capture';
  let port = 0;
  const tlsArgs = opts.tls ? ['--tls-cert', opts.tls.cert, '--tls-key', opts.tls.key] : [];
  const cluster: LocalCluster = {
    url: '',
    wsUrl: '',
    fetch: fetchTrusting(opts.tls ? loadTrust(opts.tls.ca) : undefined),
    port: 0,
    token,
    dataDir,
    coordinator: undefined as unknown as Proc,
    agents: [],
    async api<T>(method: string, path: string, body?: unknown): Promise<T> {
      const res = await cluster.fetch(`${cluster.url}${path}`, {
        method,
        headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
      });
      const json = (await res.json()) as T & { error?: { message: string } };
      if (!res.ok) throw Object.assign(new Error(`${method} ${path}: ${res.status} ${json.error?.message}`), { status: res.status, body: json });
      return json;
    },
    startAgent(name: string, extraArgs: string[] = [], placement: AgentPlacement = {}): Proc {
      const p = spawnProc(
        [...(process.env.MESHTRAIN_AGENT_NODE_ARGS?.split(' ').filter(Boolean) ?? []), AGENT, 'join', cluster.wsUrl, '--token', token, '--name', name, '--peer-listen', placement.peerListen ?? '127.0.0.1', '--backend', 'wasm', ...(opts.tls ? ['--ca', opts.tls.ca] : []), ...(opts.agentArgs ?? []), ...extraArgs],
        { env, stderr, ...(placement.exec ? { exec: placement.exec } : {}) },
      );
      cluster.agents.push(p);
      return p;
    },
    async waitForNodes(alive: number, timeoutMs = 60_000): Promise<void> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { nodes } = await cluster.api<{ nodes: Array<{ status: string; connected: boolean }> }>('GET', '/api/nodes');
        if (nodes.filter((n) => n.status === 'alive' && n.connected).length >= alive) return;
        if (Date.now() > deadline) throw new Error(`only ${nodes.filter((n) => n.status === 'alive').length} of ${alive} agents alive after ${timeoutMs} ms`);
        await new Promise((r) => setTimeout(r, 100));
      }
    },
    async startCoordinator(): Promise<void> {
      const host = opts.coordinatorHost ?? '127.0.0.1';
      const args = [COORDINATOR, 'start', '--host', host, '--port', String(port), '--data', dataDir, '--token', token];
      if (opts.heartbeatMs) args.push('--heartbeat-ms', String(opts.heartbeatMs));
      if (opts.heartbeatTimeoutMs) args.push('--heartbeat-timeout-ms', String(opts.heartbeatTimeoutMs));
      args.push(...tlsArgs, ...(opts.coordinatorArgs ?? []));
      cluster.coordinator = spawnProc(args, { env, stderr });
      const m = await waitForLine(cluster.coordinator, new RegExp(`coordinator listening on https?://${host.replace(/\./g, '\\.')}:(\\d+)`), 30_000);
      port = Number(m[1]);
      cluster.port = port;
      cluster.url = `${opts.tls ? 'https' : 'http'}://${host}:${port}`;
      cluster.wsUrl = `${opts.tls ? 'wss' : 'ws'}://${host}:${port}`;
    },
    async stop(): Promise<void> {
      const procs = [...cluster.agents, cluster.coordinator].filter(Boolean);
      for (const p of procs) if (p.child.exitCode === null) p.child.kill('SIGTERM');
      await Promise.race([Promise.all(procs.map((p) => p.exited)), new Promise((r) => setTimeout(r, 5000))]);
      for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
      if (ownDir) rmSync(dataDir, { recursive: true, force: true });
    },
  };
  try {
    await cluster.startCoordinator();
    for (let i = 0; i < opts.agents; i++) cluster.startAgent(`agent-${i}`);
    if (opts.agents > 0) await cluster.waitForNodes(opts.agents);
  } catch (err) {
    await cluster.stop();
    throw err;
  }
  return cluster;
}
