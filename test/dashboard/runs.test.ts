/**
 * The dashboard's Runs view in a real headless Chromium against a real coordinator (in this process, no agents:
 * runs, their metrics and a sweep's finished trials are recorded straight into its stores). Ticking two runs shows
 * their loss curves on one chart, the spec keys they differ in and export links; the sweep table marks its best
 * trial. A screenshot is left in test-artifacts/dashboard-runs.png.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';
import type { SweepView } from '../../coordinator/tracking/sweeps.ts';
import { launchChromium, pageErrors } from '../support/browser.ts';
import { until } from '../support/until.ts';

const ARTIFACTS = new URL('../../test-artifacts/', import.meta.url).pathname;
const TOKEN = 'dashboard-runs-token';
const base = (lr: number) => ({
  name: 'x',
  model: { vocabSize: 300, nCtx: 16, nLayer: 1, nHead: 2, nEmbd: 16 },
  data: { corpus: 'demo' },
  training: { steps: 20, batchSize: 4, seqLen: 16, lr, minLr: 0 },
});

describe('the Runs view in a real browser', () => {
  let dir: string;
  let c: Coordinator;
  let url: string;
  let browser: Browser;
  let page: Page;
  let errors: string[];
  const jobs: JobRecord[] = [];

  const post = async <T>(path: string, payload: object) =>
    (await c.app.inject({ method: 'POST', url: path, headers: { authorization: `Bearer ${TOKEN}` }, payload })).json() as T;
  /** A finished run: 20 train steps falling from `start`, a held-out loss every 10. */
  const record = (job: JobRecord, start: number) => {
    for (let step = 1; step <= 20; step++) {
      const rows: Array<{ kind: 'train' | 'eval'; atMs: number; values: Record<string, number> }> = [{ kind: 'train', atMs: step, values: { loss: start - step * 0.1, tokensPerS: 500 } }];
      if (step % 10 === 0) rows.push({ kind: 'eval', atMs: step, values: { loss: start - step * 0.09, perplexity: Math.exp(start - step * 0.09) } });
      c.jobs.recordStep(job.id, step, rows, step);
    }
    c.jobs.setState(job.id, 'succeeded', 'done', 100);
  };

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dashboard-runs-'));
    c = createCoordinator(resolveConfig({ dataDir: dir, token: TOKEN, port: 0, host: '127.0.0.1' }), silentLogger);
    url = `http://127.0.0.1:${(await c.listen()).port}`;
    for (const [name, lr] of [['cmp-a', 0.01], ['cmp-b', 0.001]] as const) jobs.push(await post<JobRecord>('/api/jobs', { ...base(lr), name }));
    record(jobs[0]!, 5);
    record(jobs[1]!, 6);
    const sweep = await post<SweepView>('/api/sweeps', { name: 'sw', base: base(0.01), strategy: 'grid', budget: 2, parallelTrials: 2, parameters: { 'training.lr': { values: [0.01, 0.001] } } });
    record(c.jobs.get(sweep.trials[0]!.jobId)!, 6); // the worse trial
    record(c.jobs.get(sweep.trials[1]!.jobId)!, 5);
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 1000 } });
    errors = pageErrors(page);
  });
  after(async () => {
    await browser?.close();
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('the Runs view lists every run and marks the sweep\'s best trial', async () => {
    await page.goto(`${url}/`);
    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#nav:not([hidden])');
    await page.click('#nav a[data-route=runs]');
    await until('four runs listed', async () => (await page.locator('table.runs tr[data-run-id]').count()) === 4);
    const best = page.locator('table.sweep-trials tr.best');
    await until('the best trial highlighted', async () => (await best.count()) === 1);
    assert.equal(await best.getAttribute('data-trial'), '2');
    assert.match(await best.innerText(), /sw-t2[\s\S]*best[\s\S]*0\.001/);
  });

  test('ticking two runs draws both loss curves on one chart with their spec differences and export links', async () => {
    for (const j of jobs) await page.check(`tr[data-run-id="${j.id}"] input[type=checkbox]`);
    const chart = page.locator('[data-testid=compare-chart]');
    await until('the compare chart', async () => (await chart.count()) === 1 && (await chart.getAttribute('data-points')) === '20');
    assert.equal(await chart.getAttribute('data-series'), '4', 'two train and two held-out series on the one chart');
    assert.equal(await chart.locator('canvas').count(), 1);
    const diff = await page.locator('table.spec-diff').innerText();
    assert.match(diff, /training\.lr\s+0\.01\s+0\.001/);
    assert.match(diff, /^name/m);
    const href = await page.locator('[data-testid=export-csv]').first().getAttribute('href');
    assert.equal(href, `/api/runs/${jobs[0]!.id}/export?format=csv`);
    const csv = await page.evaluate(async (h) => (await fetch(h!)).text(), href);
    assert.equal(csv.split('\n')[0], 'step,kind,atMs,loss,tokensPerS,perplexity', 'the link downloads with the session cookie');

    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: `${ARTIFACTS}dashboard-runs.png`, fullPage: true });

    await page.uncheck(`tr[data-run-id="${jobs[1]!.id}"] input[type=checkbox]`);
    await until('the chart gone with one run ticked', async () => (await chart.count()) === 0);
  });

  test('the page raised no errors and broke no Content-Security-Policy rule', () => {
    assert.deepEqual(errors, []);
  });
});
