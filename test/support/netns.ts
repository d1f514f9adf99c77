/**
 * Hosts in network namespaces, for tests and benchmarks that need real networks on one machine: each host is a
 * namespace with one veth to a bridge in the root namespace (10.X.0.1/24, where the test process and the
 * coordinator live), so hosts reach each other and the root through the bridge, switched at layer 2 (no IP forwarding,
 * no change to the machine's own routes or sysctls).
 *
 *   dropInbound  the host accepts no inbound TCP connection (nft drops SYNs; replies to its own connections pass):
 *                what a machine behind NAT or a closed firewall looks like to its peers
 *   mbit         its link is shaped to this rate both ways with tbf (on the veth's two ends); latency is not shaped
 *                here: these kernels have no netem (ARCHITECTURE.md), so add it with a delaying TCP proxy
 *
 * Needs root, `ip` and `tc` (iproute2) and `nft` (nftables): `npm run setup` installs them. Without them it throws
 * with what is missing; it never skips. Every namespace, veth and bridge is removed by `close()`, and by the next
 * network made with the same prefix should a crashed run leave one behind.
 */
import { execFileSync } from 'node:child_process';

export interface HostSpec {
  dropInbound?: boolean;
  mbit?: number;
}

export interface NetHost {
  readonly name: string; // namespace name
  readonly address: string; // its address on the bridge
  /** The argv prefix that runs a command inside this host: ['ip', 'netns', 'exec', name]. */
  readonly exec: readonly string[];
}

export interface Network {
  readonly bridgeAddress: string; // the root namespace's address on the bridge: where hosts reach the test process
  readonly hosts: readonly NetHost[];
  close(): void;
}

/** Commands this needs, and whether they run here. */
export function netnsProblems(): string[] {
  const problems: string[] = [];
  if (process.getuid?.() !== 0) problems.push('network namespaces need root');
  for (const cmd of ['ip', 'tc', 'nft']) {
    try {
      execFileSync(cmd, ['-V'], { stdio: 'ignore' });
    } catch {
      problems.push(`'${cmd}' is missing (npm run setup installs iproute2 and nftables)`);
    }
  }
  return problems;
}

/**
 * Makes `specs.length` hosts. `prefix` (2–5 letters) names everything (interface names are at most 15 characters);
 * two networks alive at once need different prefixes. The subnet's second octet comes from the prefix.
 */
export function createNetwork(prefix: string, specs: readonly HostSpec[]): Network {
  if (!/^[a-z]{2,5}$/.test(prefix)) throw new Error(`network prefix must be 2–5 lower-case letters, got '${prefix}'`);
  if (specs.length > 200) throw new Error('at most 200 hosts');
  const problems = netnsProblems();
  if (problems.length) throw new Error(`cannot make network namespaces here: ${problems.join('; ')}`);
  removeNetwork(prefix);
  const octet = 100 + ([...prefix].reduce((h, c) => (h * 31 + c.charCodeAt(0)) >>> 0, 7) % 150);
  const subnet = `10.${octet}.0`;
  const bridge = `${prefix}br`;
  const hosts: NetHost[] = [];
  const network: Network = { bridgeAddress: `${subnet}.1`, hosts, close: () => removeNetwork(prefix) };
  try {
    run('ip', 'link', 'add', bridge, 'type', 'bridge');
    run('ip', 'addr', 'add', `${subnet}.1/24`, 'dev', bridge);
    run('ip', 'link', 'set', bridge, 'up');
    specs.forEach((spec, i) => {
      const ns = `${prefix}${i}`;
      const outer = `${prefix}${i}a`; // root side, on the bridge
      const inner = `${prefix}${i}b`; // inside the namespace
      const address = `${subnet}.${i + 2}`;
      run('ip', 'netns', 'add', ns);
      run('ip', 'link', 'add', outer, 'type', 'veth', 'peer', 'name', inner);
      run('ip', 'link', 'set', inner, 'netns', ns);
      run('ip', 'link', 'set', outer, 'master', bridge);
      run('ip', 'link', 'set', outer, 'up');
      run('ip', '-n', ns, 'addr', 'add', `${address}/24`, 'dev', inner);
      run('ip', '-n', ns, 'link', 'set', inner, 'up');
      run('ip', '-n', ns, 'link', 'set', 'lo', 'up');
      if (spec.mbit !== undefined) {
        // tbf on each end: the namespace's uploads leave through `inner`, its downloads through `outer`. The bucket
        // holds at least one 64 KB TSO burst and ~4 ms of traffic; packets queue up to 100 ms before being dropped.
        const burst = `${Math.max(64 * 1024, Math.round((spec.mbit * 1e6) / 8 / 250))}b`;
        const args = ['root', 'tbf', 'rate', `${spec.mbit}mbit`, 'burst', burst, 'latency', '100ms'];
        run('tc', '-n', ns, 'qdisc', 'add', 'dev', inner, ...args);
        run('tc', 'qdisc', 'add', 'dev', outer, ...args);
      }
      if (spec.dropInbound) {
        execFileSync('ip', ['netns', 'exec', ns, 'nft', '-f', '-'], {
          input: `table inet meshtrain_nat {
  chain input {
    type filter hook input priority 0; policy accept;
    iif lo accept
    ct state established,related accept
    tcp flags syn drop
  }
}
`,
          stdio: ['pipe', 'ignore', 'pipe'],
        });
      }
      hosts.push({ name: ns, address, exec: ['ip', 'netns', 'exec', ns] });
    });
  } catch (err) {
    network.close();
    throw err;
  }
  return network;
}

/** Removes every namespace, veth and the bridge a network with this prefix made (quietly, whatever exists). */
function removeNetwork(prefix: string): void {
  const names = execFileSync('ip', ['netns', 'list'], { encoding: 'utf8' })
    .split('\n')
    .map((l) => l.split(' ')[0]!)
    .filter((n) => new RegExp(`^${prefix}\\d+$`).test(n));
  for (const ns of names) quiet('ip', 'netns', 'del', ns); // deleting a namespace deletes its veth pair too
  quiet('ip', 'link', 'del', `${prefix}br`);
}

function run(cmd: string, ...args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  } catch (err) {
    const stderr = (err as { stderr?: Buffer }).stderr?.toString().trim();
    throw new Error(`${cmd} ${args.join(' ')} failed: ${stderr || (err as Error).message}`);
  }
}

function quiet(cmd: string, ...args: string[]): void {
  try {
    execFileSync(cmd, args, { stdio: 'ignore' });
  } catch {
    // already gone
  }
}
