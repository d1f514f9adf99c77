/**
 * A real headless Chromium for the dashboard tests, driven by playwright-core (which downloads no browser: it uses
 * the system's, Debian's `chromium` package here and in CI).
 */
import { existsSync } from 'node:fs';
import { chromium, type Browser, type Page } from 'playwright-core';

export const CHROMIUM_PATH = process.env.CHROMIUM_PATH || '/usr/bin/chromium';

/** Fails, never skips, without a browser: a dashboard that was never rendered is not a dashboard that passed. */
export async function launchChromium(): Promise<Browser> {
  if (!existsSync(CHROMIUM_PATH)) {
    throw new Error(`no Chromium at ${CHROMIUM_PATH}: install it (apt-get install chromium) or point CHROMIUM_PATH at one`);
  }
  return chromium.launch({ executablePath: CHROMIUM_PATH, headless: true, args: ['--no-sandbox'] });
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
