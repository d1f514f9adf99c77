/**
 * The dashboard in a real headless Chromium against a real coordinator and two agent processes: log in, watch the
 * agents, submit a job through the form and watch it train live, see a bad spec's errors beside their fields, and
 * cancel the job from its page. A screenshot of the job page is left in test-artifacts/dashboard-job.png.
 * Run: node scripts/run-tests.mjs test/dashboard
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, statSync } from 'node:fs';
import type { Browser, Page } from 'playwright-core';
import type { JobRecord } from '../../coordinator/store/job-store.ts';
import { launchChromium, pageErrors } from '../support/browser.ts';
import { until } from '../support/until.ts';
import { clusterFixture, type JobView } from '../support/jobs.ts';

const ARTIFACTS = new URL('../../test-artifacts/', import.meta.url).pathname;

/** Fields of the submit form (inputs are named by JSON pointer) for a tiny model that trains a few steps a second. */
const TINY_JOB: Record<string, string> = {
  '/name': 'dashboard-tiny',
  '/model/vocabSize': '300',
  '/model/nCtx': '32',
  '/model/nLayer': '2',
  '/model/nHead': '2',
  '/model/nEmbd': '32',
  '/training/steps': '5000', // far more than the test waits for: it is cancelled from its page
  '/training/batchSize': '4',
  '/training/seqLen': '32',
  '/training/evalEvery': '5',
  '/training/checkpointEvery': '25',
};

describe('the dashboard in a real browser', () => {
  const fx = clusterFixture('dashboard', [0, 30], { agents: 2 });
  let browser: Browser;
  let page: Page;
  let errors: string[];
  const apiRequests: string[] = [];
  let jobId = '';

  before(async () => {
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    errors = pageErrors(page);
    page.on('request', (r) => {
      const path = new URL(r.url()).pathname;
      if (path.startsWith('/api/')) apiRequests.push(path);
    });
  });
  after(async () => {
    await browser?.close();
  });

  const fillForm = async (fields: Record<string, string>) => {
    for (const [pointer, value] of Object.entries(fields)) await page.fill(`input[name="${pointer}"]`, value);
  };
  const errorFor = (pointer: string) => page.locator(`[data-error-for="${pointer}"]`).innerText();

  test('before logging in the page shows only the login form and fetches no data', async () => {
    await page.goto(`${fx.cluster.url}/`);
    await page.waitForSelector('#login-form');
    assert.equal(await page.locator('#nav').isHidden(), true);
    assert.equal(await page.locator('table').count(), 0);
    assert.deepEqual(apiRequests, ['/api/session']);
  });

  test('a wrong token is refused with the coordinator\'s message', async () => {
    await page.fill('#token', 'not-the-cluster-token');
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#login-error:not([hidden])');
    assert.match(await page.locator('#login-error').innerText(), /wrong cluster token/);
    assert.deepEqual(apiRequests, ['/api/session', '/api/login']);
  });

  test('the right token opens the live dashboard listing both agents', async () => {
    await page.fill('#token', fx.cluster.token);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#live[data-state=live]');
    await until('both agents listed alive', async () => (await page.locator('tr.node-alive[data-node-id]').count()) === 2);
    assert.match(await page.locator('table.nodes').innerText(), /agent-0[\s\S]*GFLOP\/s/);
    // The Links column: loopback agents answer the coordinator's reachability probe, so peers dial them directly.
    await until('reachability shown', async () => (await page.locator('table.nodes .badge-direct').count()) === 2);
    assert.match(await page.locator('table.nodes').innerText(), /links[\s\S]*direct[\s\S]*answered the probe/i);
  });

  test('a job submitted through the form trains live on its page', async () => {
    await page.click('#nav a[data-route=submit]');
    await fillForm({ ...TINY_JOB, '/data/corpus': fx.corpus });
    await page.check('#parallel-manual');
    await fillForm({ '/parallel/data': '2' });
    await page.click('#submit-form button[type=submit]');
    jobId = await until('the job page to open', async () => /^#\/jobs\/(job-[0-9a-f]+)$/.exec(new URL(page.url()).hash)?.[1]);

    // The loss chart grows with no reload: rows arrive on the event stream.
    const points = async () => Number(await page.locator('[data-testid=loss-chart]').getAttribute('data-points'));
    const first = await until('the first plotted steps', async () => (await points()) >= 3 && points(), 60_000);
    await until('the loss chart to grow', async () => (await points()) >= first + 10, 30_000);
    await until('a held-out loss', async () => /^\d/.test(await page.locator('[data-testid=eval-loss]').innerText()), 30_000);
    await until('a checkpoint', async () => (await page.locator('table.checkpoints tbody tr').count()) >= 1, 30_000);
    await page.waitForSelector('[data-testid=layout] .cell');
    assert.equal(await page.locator('[data-testid=job-state]').getAttribute('data-state'), 'running');
    assert.match(await page.locator('pre.explanation').innerText(), /2×1×1|data/);

    mkdirSync(ARTIFACTS, { recursive: true });
    const shot = `${ARTIFACTS}dashboard-job.png`;
    await page.screenshot({ path: shot, fullPage: true });
    assert.ok(statSync(shot).size > 30_000, 'a screenshot with charts in it, not a blank page');
  });

  test('a bad spec shows each of the coordinator\'s errors beside its field', async () => {
    const { jobs } = await fx.cluster.api<{ jobs: JobRecord[] }>('GET', '/api/jobs');
    await page.click('#nav a[data-route=submit]');
    await fillForm({ ...TINY_JOB, '/data/corpus': fx.corpus, '/training/steps': '0', '/model/nHead': '3', '/training/lr': '-1' });
    await page.click('#submit-form button[type=submit]');
    await until('the field errors', async () => (await errorFor('/training/steps')) !== '');
    assert.match(await errorFor('/training/steps'), /^\/training\/steps .*1/);
    assert.match(await errorFor('/training/lr'), /^\/training\/lr /);
    assert.equal(await page.locator('input[name="/training/lr"]').getAttribute('aria-invalid'), 'true');
    assert.equal(await errorFor('/model/nHead'), '', 'the width check names nEmbd first');
    assert.equal(new URL(page.url()).hash, '#/submit', 'still on the form');
    const after = await fx.cluster.api<{ jobs: JobRecord[] }>('GET', '/api/jobs');
    assert.equal(after.jobs.length, jobs.length, 'nothing was submitted');

    // Once the schema passes, the cross-field rules come back, each beside the first field it names.
    await fillForm({ '/training/steps': '10', '/training/lr': '' });
    await page.click('#submit-form button[type=submit]');
    await until('the width error', async () => /must be divisible by \/model\/nHead 3/.test(await errorFor('/model/nEmbd')));
    assert.equal(await errorFor('/training/steps'), '', 'old errors are cleared');
  });

  test('the Cancel button cancels the running job', async () => {
    await page.goto(`${fx.cluster.url}/#/jobs/${jobId}`); // a same-page hash change: the app routes, no reload
    const cancel = page.locator('[data-testid=cancel-job]');
    await until('the running job\'s Cancel button', () => cancel.isEnabled());
    page.once('dialog', (d) => void d.accept());
    await cancel.click();
    // Generous: on a loaded machine the agents finish their step before they stop, and the page hears it from the feed.
    let shown: string | null = null;
    await until('the page to show it cancelled', async () => (shown = await page.locator('[data-testid=job-state]').getAttribute('data-state')) === 'cancelled', 60_000)
      .catch((err: Error) => assert.fail(`${err.message}; the page shows '${shown}'`));
    assert.equal(await cancel.isDisabled(), true, 'a finished job cannot be cancelled again');
    const { job } = await fx.cluster.api<JobView>('GET', `/api/jobs/${jobId}`);
    assert.equal(job.state, 'cancelled');
  });

  test('the page raised no errors and broke no Content-Security-Policy rule', () => {
    assert.deepEqual(errors, []);
  });
});
