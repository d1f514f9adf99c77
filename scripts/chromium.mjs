/**
 * The headless Chromium the dashboard tests drive (through playwright-core, which downloads no browser):
 * CHROMIUM_PATH when set, else the one the npm package @sparticuz/chromium ships inside its tarball (Linux x64 and
 * arm64; extracted once to the temp folder), so no machine needs a browser installed. Its build links only glibc,
 * libnss3 and libexpat (npm run setup installs them). `findChromium` checks that the binary actually starts and
 * otherwise throws one line that says what to do; `env` is what the browser process needs on top of ours.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

/** Flags for a browser in a test: no sandbox (tests run as root in CI, where Chromium's sandbox refuses to start). */
export const CHROMIUM_ARGS = ['--no-sandbox'];

export async function findChromium() {
  let path = process.env.CHROMIUM_PATH;
  let source = 'CHROMIUM_PATH';
  // The build derives navigator.language from LANG, and C.UTF-8 (Debian's default) becomes "en-US@posix", which is
  // no BCP 47 tag: uPlot's Intl.NumberFormat(navigator.language) then throws. A person's browser says en-US.
  const env = { LANG: 'en_US.UTF-8' };
  if (path) {
    if (!existsSync(path)) throw new Error(`CHROMIUM_PATH=${path} does not exist: point it at a Chromium or Chrome binary, or unset it to use the one npm installed`);
  } else {
    if (process.platform !== 'linux' || !['x64', 'arm64'].includes(process.arch)) {
      throw new Error(`no bundled Chromium for ${process.platform}-${process.arch}: set CHROMIUM_PATH to a Chromium or Chrome binary`);
    }
    let chromium;
    try {
      chromium = (await import('@sparticuz/chromium')).default;
    } catch (err) {
      throw new Error(`the npm package @sparticuz/chromium is not installed (${err.message.split('\n')[0]}): run npm ci`);
    }
    path = await chromium.executablePath();
    source = '@sparticuz/chromium';
    // It unpacks its own fonts and fontconfig file beside the binary; a bare machine has no other fonts, and without
    // any the page lays out no text at all.
    const fonts = join(tmpdir(), 'fonts');
    if (existsSync(join(fonts, 'fonts.conf'))) env.FONTCONFIG_PATH = fonts;
  }
  if (process.env.FONTCONFIG_PATH && !env.FONTCONFIG_PATH) env.FONTCONFIG_PATH = process.env.FONTCONFIG_PATH;
  const run = spawnSync(path, [...CHROMIUM_ARGS, '--headless', '--version'], { encoding: 'utf8', timeout: 60_000, env: { ...process.env, ...env } });
  if (run.status !== 0) {
    const why = `${run.stderr ?? ''}${run.error?.message ?? ''}`.trim().split('\n')[0];
    const lib = /error while loading shared libraries: (\S+?)(\.so)?[.:]/.exec(why);
    if (lib) throw new Error(`Chromium (${path}) cannot start, ${lib[1]} is missing: run npm run setup as root, or sudo apt-get install -y libnss3 libexpat1`);
    throw new Error(`Chromium (${path}, from ${source}) does not start: ${why || `exit ${run.status}`}`);
  }
  return { path, source, version: run.stdout.trim(), env };
}
