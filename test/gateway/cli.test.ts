/** `gateway serve`: the real command (bin/gateway.js) in child processes, and runCli with a backend factory in process. */
import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import { createLogger, silentLogger } from '../../common/log.ts';
import { ModelRegistry } from '../../coordinator/registry/registry.ts';
import { SqliteStateStore } from '../../coordinator/store/state-store.ts';
import { MODEL_POLL_MS, runCli } from '../../gateway/cli.ts';
import { FakeBackend } from '../../gateway/fake-backend.ts';
import type { BackendFactory } from '../../gateway/registry-source.ts';

const BIN = new URL('../../bin/gateway.js', import.meta.url).pathname;

/** Runs bin/gateway.js to completion. */
function gateway(args: string[]): Promise<{ code: number | null; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, [BIN, ...args], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'warn' } });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => (stderr += d));
    child.on('exit', (code) => resolve({ code, stdout, stderr }));
  });
}

async function registryDir(t: TestContext): Promise<string> {
  const data = mkdtempSync(join(tmpdir(), 'gw-cli-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const state = new SqliteStateStore(join(data, 'state.db'));
  await new ModelRegistry(join(data, 'registry'), state.database).register('tiny', {
    'config.json': Buffer.from(JSON.stringify({ model_type: 'gpt2', n_ctx: 64 })),
    'model.safetensors': Buffer.from('weights'),
    'tokenizer.json': Buffer.from('{}'),
  }, { jobId: 'job-1' });
  state.close();
  return join(data, 'registry');
}

test('--help explains every option, and a registry version whose files are not a model is refused, not faked', async (t) => {
  const registry = await registryDir(t);
  const [help, noBackend] = await Promise.all([gateway(['--help']), gateway(['serve', '--registry', registry, '--port', '0'])]);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: gateway serve/);
  for (const option of ['--registry', '--model', '--port', '--host', '--token', '--api-key', '--max-batch-size', '--max-batch-wait-ms']) assert.match(help.stdout, new RegExp(`^  ${option} `, 'm'));
  assert.match(help.stdout, /--fake\s+TEST\/DEVELOPMENT ONLY/);
  assert.equal(noBackend.code, 1);
  assert.match(noBackend.stderr, /^gateway: MDL_ERR_MODEL_FILES: config\.json: /);
  assert.equal(noBackend.stdout, '', 'it never claimed to be listening');
});

test('bad arguments exit 2 and a model missing from the registry exits 1, each saying what is wrong', async (t) => {
  const registry = await registryDir(t);
  const run = async (args: string[]) => {
    let err = '';
    const code = await runCli(args, { log: silentLogger, err: (text) => (err += text), out: () => assert.fail('nothing should start') });
    return { code, err };
  };
  const cases: Array<[string[], number, RegExp]> = [
    [['serve'], 2, /missing --registry DIR\|URL \(or --fake for the test backend\)/],
    [['serve', '--fake', '--registry', registry], 2, /give --fake or --registry, not both/],
    [['serve', '--fake', '--port', '70000'], 2, /--port must be an integer in \[0, 65535\], got '70000'/],
    [['serve', '--fake', '--model', 'a@v1'], 2, /--fake has no versions/],
    [['serve', '--fake', '--bogus'], 2, /Unknown option '--bogus'/],
    [['start'], 2, /unknown command 'start'/],
    [['serve', '--registry', registry, '--model', 'absent'], 1, /GW_ERR_REGISTRY: no model 'absent' in .*registered: tiny/],
  ];
  for (const [args, code, message] of cases) {
    const res = await run(args);
    assert.equal(res.code, code, args.join(' '));
    assert.match(res.err, message, args.join(' '));
  }
});

test('gateway serve --fake answers completions end to end and stops on SIGTERM', async (t) => {
  const child = spawn(process.execPath, [BIN, 'serve', '--fake', '--port', '0', '--host', '127.0.0.1', '--api-key', 'k-1'], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, LOG_LEVEL: 'warn' } });
  t.after(() => child.kill('SIGKILL'));
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const first = await new Promise<string>((resolve, reject) => {
    createInterface({ input: child.stdout }).once('line', resolve);
    child.once('exit', (code) => reject(new Error(`exited ${code}: ${stderr}`)));
  });
  const url = /^gateway listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(first)?.[1];
  assert.ok(url, first);
  assert.match(stderr, /serving FakeBackend \(fake-char\): a deterministic test toy, not a trained model/);
  const res = await fetch(`${url}/v1/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: 'Bearer k-1' },
    body: JSON.stringify({ model: 'fake-char', prompt: 'hello', max_tokens: 5, temperature: 0 }),
  });
  assert.equal(res.status, 200);
  assert.equal(((await res.json()) as { choices: Array<{ text: string }> }).choices[0]!.text.length, 5);
  const exit = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  assert.equal(await exit, 0);
});

test('with a backend factory, serve loads the verified registry version and serves it under its name', async (t) => {
  const registry = await registryDir(t);
  const seen: Array<{ files: string[]; name: string; version: number; verified: boolean }> = [];
  const factory: BackendFactory = async (files, meta) => {
    seen.push({ files: [...files.keys()].sort(), name: meta.name, version: meta.version, verified: meta.verified });
    const config = JSON.parse(Buffer.from(files.get('config.json')!).toString()) as { n_ctx: number };
    return new FakeBackend({ id: meta.name, contextLength: config.n_ctx });
  };
  let stop!: (sig: string) => void;
  const lines: string[] = [];
  const listening = new Promise<string>((resolve) => {
    const done = runCli(['serve', '--registry', registry, '--port', '0', '--host', '127.0.0.1'], {
      backendFactory: factory,
      log: silentLogger,
      stopSignal: new Promise((r) => (stop = r)),
      out: (line) => {
        lines.push(line);
        resolve(line.replace('gateway listening on ', ''));
      },
    });
    t.after(async () => {
      stop('test end');
      await done;
    });
  });
  const url = await listening;
  assert.deepEqual(seen, [{ files: ['config.json', 'lineage.json', 'model.safetensors', 'tokenizer.json'], name: 'tiny', version: 1, verified: true }]);
  const models = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> };
  assert.deepEqual(models.data.map((m) => m.id), ['tiny']);
  const tooLong = await fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model: 'tiny', prompt: 'x'.repeat(60), max_tokens: 10 }) });
  assert.equal(tooLong.status, 400, 'the context length comes from the version\'s config.json');
});

test('--wait-for-models listens at once, answers 503 on /readyz until the registry has the model, then loads it and the deployments', async (t) => {
  const data = mkdtempSync(join(tmpdir(), 'gw-cli-wait-'));
  t.after(() => rmSync(data, { recursive: true, force: true }));
  const state = new SqliteStateStore(join(data, 'state.db'));
  t.after(() => state.close());
  const registry = new ModelRegistry(join(data, 'registry'), state.database); // empty: no job has finished yet
  const deploymentsFile = join(data, 'deployments.json');
  writeFileSync(deploymentsFile, JSON.stringify([{ name: 'prod', primary: { model: 'tiny', version: 1 } }]));
  const factory: BackendFactory = async (_files, meta) => new FakeBackend({ id: meta.name, contextLength: 64 });
  let stop!: (sig: string) => void;
  const logged: string[] = [];
  const url = await new Promise<string>((resolve) => {
    const done = runCli(['serve', '--registry', join(data, 'registry'), '--wait-for-models', '--deployments', deploymentsFile, '--port', '0', '--host', '127.0.0.1'], {
      backendFactory: factory,
      log: createLogger('gateway', { level: 'warn', write: (line) => logged.push(line) }),
      stopSignal: new Promise((r) => (stop = r)),
      out: (line) => resolve(line.replace('gateway listening on ', '')),
    });
    t.after(async () => {
      stop('test end');
      assert.equal(await done, 0);
    });
  });
  const ready = async () => {
    const res = await fetch(`${url}/readyz`);
    return { status: res.status, body: await res.json() };
  };
  assert.deepEqual(await ready(), { status: 503, body: { status: 'waiting' } }, 'an anonymous caller learns nothing about the registry');
  assert.match(logged.join('\n'), /waiting for models \(--wait-for-models\): no models registered in .*registry/, 'why it waits goes to the log');
  assert.equal((await fetch(`${url}/healthz`)).status, 200, 'live while it waits');
  const completion = (model: string) => fetch(`${url}/v1/completions`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ model, prompt: 'Hello', max_tokens: 4 }) });
  assert.equal((await completion('tiny')).status, 404, 'nothing is served before the model exists');

  await registry.register('tiny', {
    'config.json': Buffer.from(JSON.stringify({ model_type: 'gpt2', n_ctx: 64 })),
    'model.safetensors': Buffer.from('weights'),
    'tokenizer.json': Buffer.from('{}'),
  }, { jobId: 'job-1' });
  const deadline = performance.now() + 4 * MODEL_POLL_MS;
  let now = await ready();
  while (now.status !== 200 && performance.now() < deadline) {
    await new Promise((r) => setTimeout(r, 100));
    now = await ready();
  }
  assert.deepEqual(now, { status: 200, body: { status: 'ready' } });
  const served = (await (await fetch(`${url}/v1/models`)).json()) as { data: Array<{ id: string }> };
  assert.deepEqual(served.data.map((m) => m.id), ['prod', 'tiny']);
  assert.equal((await completion('tiny')).status, 200);
  const routed = await completion('prod');
  assert.equal(routed.status, 200);
  assert.equal(routed.headers.get('x-meshtrain-version'), 'tiny@v1', 'the deployments file was installed once the model loaded');
});
