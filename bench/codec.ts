/**
 * npm run bench -- codec [--rounds 3] [--ms 300]
 *
 * What msgpackr's native string extractor (the msgpackr-extract package, prebuilt for linux/darwin/win32) buys on
 * the protocol's decode path: decodeFrame then the family's parser (schema check), as a connection runs them on
 * every control and peer message. The same workload runs in two child processes, one with the native extractor
 * and one with MSGPACKR_NATIVE_ACCELERATION_DISABLED=true (msgpackr's pure-JS decoder, what a platform without a
 * prebuilt binary gets), alternating for --rounds rounds; each child decodes each message type for --ms ms.
 *
 * Keys:
 *   native_enabled          whether the native extractor loaded in the "native" child (false: nothing to compare)
 *   decode_ns               per message type: median ns per decode+parse, { native, js, js_over_native }
 *   js_over_native_geomean  geometric mean of js ÷ native over the message types (> 1: native is faster)
 *   bytes                   per message type: the encoded frame's size
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

interface ChildResult {
  native: boolean;
  ns: Record<string, number>;
  bytes: Record<string, number>;
}

async function child(ms: number): Promise<ChildResult> {
  const { isNativeAccelerationEnabled } = await import('msgpackr');
  const { decodeFrame, encodeMessage } = await import('../protocol/codec.ts');
  const { families } = await import('../test/protocol/fixtures.ts');
  const ns: Record<string, number> = {}, bytes: Record<string, number> = {};
  for (const family of families) {
    for (const [type, example] of Object.entries(family.examples)) {
      const frame = encodeMessage(example);
      const key = `${family.name}:${type}`;
      bytes[key] = frame.byteLength;
      for (let i = 0; i < 2000; i++) family.parse(decodeFrame(frame)); // warm-up: JIT and the parser's compiled check
      let n = 0;
      const start = process.hrtime.bigint(), until = start + BigInt(ms) * 1_000_000n;
      let now = start;
      while (now < until) {
        for (let i = 0; i < 200; i++) family.parse(decodeFrame(frame));
        n += 200;
        now = process.hrtime.bigint();
      }
      ns[key] = Number(now - start) / n;
    }
  }
  return { native: isNativeAccelerationEnabled, ns, bytes };
}

function runChild(native: boolean, ms: number): Promise<ChildResult> {
  const self = fileURLToPath(import.meta.url);
  const env = { ...process.env };
  if (native) delete env.MSGPACKR_NATIVE_ACCELERATION_DISABLED;
  else env.MSGPACKR_NATIVE_ACCELERATION_DISABLED = 'true';
  return new Promise((resolve, reject) => {
    const p = spawn(process.execPath, ['--import', 'tsx', self, '--child', '--ms', String(ms)], { env, stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => (out += c.toString()));
    p.on('error', reject);
    p.on('exit', (code) => (code === 0 ? resolve(JSON.parse(out.trim().split('\n').pop()!) as ChildResult) : reject(new Error(`codec child exited ${code}`))));
  });
}

const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;

export default async function codecBench(argv: string[]): Promise<object> {
  const { values } = parseArgs({ args: argv, options: { rounds: { type: 'string', default: '3' }, ms: { type: 'string', default: '300' } } });
  const rounds = Number(values.rounds), ms = Number(values.ms);
  const runs: { native: ChildResult[]; js: ChildResult[] } = { native: [], js: [] };
  for (let r = 0; r < rounds; r++) {
    for (const native of r % 2 === 0 ? [true, false] : [false, true]) {
      const res = await runChild(native, ms);
      (native ? runs.native : runs.js).push(res);
      process.stderr.write(`codec: round ${r + 1}/${rounds} ${native ? 'native' : 'js'} (native extractor ${res.native ? 'loaded' : 'absent'})\n`);
    }
  }
  const decode: Record<string, { native: number; js: number; js_over_native: number }> = {};
  let logSum = 0;
  const types = Object.keys(runs.native[0]!.ns);
  for (const t of types) {
    const nat = median(runs.native.map((r) => r.ns[t]!)), js = median(runs.js.map((r) => r.ns[t]!));
    decode[t] = { native: Math.round(nat), js: Math.round(js), js_over_native: Number((js / nat).toFixed(3)) };
    logSum += Math.log(js / nat);
  }
  return {
    bench: 'codec',
    native_enabled: runs.native.every((r) => r.native) && runs.js.every((r) => !r.native),
    decode_ns: decode,
    js_over_native_geomean: Number(Math.exp(logSum / types.length).toFixed(3)),
    bytes: runs.native[0]!.bytes,
    rounds,
    ms_per_type: ms,
  };
}

if (process.argv.includes('--child')) {
  const { values } = parseArgs({ args: process.argv.slice(2), options: { child: { type: 'boolean' }, ms: { type: 'string', default: '300' } } });
  process.stdout.write(JSON.stringify(await child(Number(values.ms))) + '\n');
}
