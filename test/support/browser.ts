/**
 * A real headless Chromium for the dashboard tests, driven by playwright-core (which downloads no browser): the one
 * the npm package @sparticuz/chromium ships, or CHROMIUM_PATH (scripts/chromium.mjs finds and checks it).
 */
import { chromium, type Browser, type Page } from 'playwright-core';
import { CHROMIUM_ARGS, findChromium } from '../../scripts/chromium.mjs';

/** Fails, never skips, without a browser: a dashboard that was never rendered is not a dashboard that passed. */
export async function launchChromium(): Promise<Browser> {
  const { path, env } = await findChromium();
  return chromium.launch({ executablePath: path, headless: true, args: [...CHROMIUM_ARGS], env: { ...process.env, ...env } });
}

/**
 * Collects what went wrong inside the page: uncaught exceptions and console errors, Content-Security-Policy
 * violations included. Failed requests are left out: the tests provoke 401s and 400s on purpose.
 */
export function pageErrors(page: Page): string[] {
  const errors: string[] = [];
  page.on('pageerror', (err) => errors.push(`uncaught: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error' && !msg.text().startsWith('Failed to load resource')) errors.push(`console: ${msg.text()}`);
  });
  return errors;
}
