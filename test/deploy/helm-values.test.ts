/**
 * deploy/helm/meshtrain's values: values.schema.json's errors (a misspelt key, a wrong type), the chart's own
 * `required` checks, the generated token, Chart.yaml's appVersion and NOTES.txt. The rendered objects themselves are
 * checked in helm-chart.test.ts.
 *   npx tsx --test test/deploy/helm-values.test.ts
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parse } from 'yaml';
import { CHART, ROOT, render } from '../support/helm-render.ts';

const CI_DIR = join(CHART, 'ci');
const CI_FILES = readdirSync(CI_DIR).filter((f) => f.endsWith('.yaml')).sort();

describe('values.schema.json', () => {
  let dir: string;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'meshtrain-helm-'));
  });
  after(() => rmSync(dir, { recursive: true, force: true })); // also when a test fails
  const renderWith = (values: string) => {
    const file = join(dir, `values-${Math.random().toString(36).slice(2)}.yaml`);
    writeFileSync(file, values);
    return render(['-f', file]);
  };

  test('rejects a misspelt key and a value of the wrong type, naming both', () => {
    const r = renderWith('agents:\n  pools:\n    - name: gpu\n      replicas: 2\n      gpu: 1\ngateway:\n  replicas: two\n');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /values don't meet the specifications of the schema/);
    assert.match(r.stderr, /agents\.pools\.0: Additional property gpu is not allowed/);
    assert.match(r.stderr, /gateway\.replicas: Invalid type\. Expected: integer, given: string/);
    assert.equal(r.stdout, '');
  });

  test('rejects a pool name that cannot be part of a Deployment name, and an unknown Service type', () => {
    const r = renderWith('agents:\n  pools:\n    - {name: GPU_pool, replicas: 1}\ncoordinator:\n  service: {type: Ingress, port: 7070}\n');
    assert.equal(r.status, 1);
    assert.match(r.stderr, /agents\.pools\.0\.name: Does not match pattern/);
    assert.match(r.stderr, /coordinator\.service\.type: .*must be one of/);
  });
});

test('tls.enabled without tls.secretName fails with the message of `required`', () => {
  const r = render(['--set', 'tls.enabled=true']);
  assert.equal(r.status, 1);
  assert.match(r.stderr, /tls\.secretName is required when tls\.enabled/);
});

test('without auth.token the chart generates one of 48 characters', () => {
  const r = render([]);
  assert.equal(r.status, 0, r.stderr);
  const token = Buffer.from(r.objects.find((o) => o.kind === 'Secret')!.data!.token!, 'base64').toString();
  assert.match(token, /^[A-Za-z0-9]{48}$/);
});

test('Chart.yaml\'s appVersion is package.json\'s version, and the image tag defaults to it', () => {
  const chart = parse(readFileSync(join(CHART, 'Chart.yaml'), 'utf8'));
  const pkg = JSON.parse(readFileSync(join(ROOT, 'package.json'), 'utf8'));
  assert.equal(chart.apiVersion, 'v2');
  assert.equal(chart.appVersion, pkg.version);
  const r = render([]);
  assert.equal(r.status, 0, r.stderr);
  for (const w of r.objects.filter((o) => o.kind === 'Deployment' || o.kind === 'StatefulSet')) {
    assert.equal(w.spec.template.spec.containers[0].image, `meshtrain:${pkg.version}`);
  }
});

test('NOTES.txt renders with every ci/*.yaml and tells how to read the token and reach the coordinator', () => {
  for (const file of CI_FILES) {
    const r = render(['-f', join(CI_DIR, file), '--notes']);
    assert.equal(r.status, 0, `${file}: ${r.stderr}`);
    assert.match(r.stderr, /get secret \S+ -o jsonpath='\{\.data\.token\}' \| base64 -d/, file);
    assert.match(r.stderr, file === 'tls-values.yaml' ? /node-agent\.js join wss:\/\/ADDRESS:7070 --ca ca\.crt/ : /port-forward svc\/meshtrain-coordinator 7070|join ws:\/\/ADDRESS/, file);
    // Exposed without TLS, or a gateway without keys: said in so many words.
    const values = parse(readFileSync(join(CI_DIR, file), 'utf8')) ?? {};
    const exposedInClear = (values.coordinator?.service?.type ?? 'ClusterIP') !== 'ClusterIP' && !values.tls?.enabled;
    assert.equal(/WARNING: the coordinator is reachable from outside the cluster .* without TLS/.test(r.stderr), exposedInClear, `${file}: coordinator warning`);
    assert.equal(/WARNING: gateway\.apiKeys is off/.test(r.stderr), !values.gateway?.apiKeys, `${file}: gateway warning`);
  }
});
