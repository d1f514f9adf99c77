/**
 * The dashboard's Models view in a real headless Chromium against a real coordinator (in this process): a published
 * GPT-2 folder chosen in the import form is hashed in the page, uploaded, checked and registered, and its version is
 * listed as imported; a folder whose weights disagree with its config shows the coordinator's error naming the tensor.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Browser, Page } from 'playwright-core';
import { silentLogger } from '../../common/log.ts';
import { resolveConfig } from '../../coordinator/config.ts';
import { createCoordinator, type Coordinator } from '../../coordinator/api/server.ts';
import type { Tensor } from '../../model/safetensors.ts';
import { launchChromium, pageErrors } from '../support/browser.ts';
import { writeGpt2Folder } from '../support/gpt2-folder.ts';
import { until } from '../support/until.ts';

const TOKEN = 'dashboard-models-token';

describe('the Models view in a real browser', () => {
  let dir: string;
  let c: Coordinator;
  let url: string;
  let browser: Browser;
  let page: Page;
  let errors: string[];

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'dashboard-models-'));
    writeGpt2Folder(join(dir, 'gpt2-fp16'));
    writeGpt2Folder(join(dir, 'gpt2-bad'), (dict) => {
      const w = dict['transformer.h.0.attn.c_proj.weight']!;
      dict['transformer.h.0.attn.c_proj.weight'] = { ...w, shape: [8, 32] } as Tensor;
    });
    c = createCoordinator(resolveConfig({ dataDir: join(dir, 'data'), token: TOKEN, port: 0, host: '127.0.0.1' }), silentLogger);
    url = `http://127.0.0.1:${(await c.listen()).port}`;
    browser = await launchChromium();
    page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    errors = pageErrors(page);
    await page.goto(`${url}/`);
    await page.fill('#token', TOKEN);
    await page.click('#login-form button[type=submit]');
    await page.waitForSelector('#nav:not([hidden])');
    await page.click('#nav a[data-route=models]');
    await page.waitForSelector('#import-form');
  });
  after(async () => {
    await browser?.close();
    await c?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test('a chosen GPT-2 folder is uploaded from the page, registered, and listed as imported', async () => {
    await page.fill('#import-name', 'tiny-gpt2');
    await page.setInputFiles('#import-files', join(dir, 'gpt2-fp16'));
    await page.click('#import-form button[type=submit]');
    const status = page.locator('[data-testid=import-status]');
    await until('the import to finish', async () => /registered tiny-gpt2 v1/.test(await status.innerText()) || (await page.locator('[data-testid=import-error]').isVisible() && `error: ${await page.locator('[data-testid=import-error]').innerText()}`), 60_000)
      .then((r) => assert.equal(r, true, String(r)));
    const version = c.registry.get('tiny-gpt2', 1);
    assert.equal((version.lineage.imported as { source: string }).source, 'gpt2-fp16');
    assert.ok(version.files['tokenizer_config.json'], 'kept files came along; README.md did not');
    assert.equal(version.files['README.md'], undefined);
    const row = page.locator('section[data-model="tiny-gpt2"] table.versions tbody tr');
    await until('the version listed', async () => (await row.count()) === 1);
    assert.match(await row.innerText(), /v1[\s\S]*imported/);
  });

  test('a folder whose weights disagree with its config shows the error naming the tensor', async () => {
    await page.fill('#import-name', 'bad-gpt2');
    await page.setInputFiles('#import-files', join(dir, 'gpt2-bad'));
    await page.click('#import-form button[type=submit]');
    const error = page.locator('[data-testid=import-error]');
    await error.waitFor({ state: 'visible', timeout: 60_000 });
    assert.match(await error.innerText(), /MDL_ERR_MODEL_FILES[\s\S]*h\.0\.attn\.c_proj\.weight has shape \[8, 32\], config\.json implies \[16, 16\]/);
    assert.equal(c.registry.models().some((m) => m.name === 'bad-gpt2'), false);
  });

  test('the page raised no errors and broke no Content-Security-Policy rule', () => {
    assert.deepEqual(errors, []);
  });
});
