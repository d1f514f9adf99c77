/**
 * The headless Chromium the dashboard tests drive (through playwright-core, which downloads no browser):
 * CHROMIUM_PATH when set, else the one the npm package @sparticuz/chromium ships inside its tarball (Linux x64 and
 * arm64; extracted once to the temp folder), so no machine needs a browser installed. Its build links only glibc,
 * libnss3 and libexpat (npm run setup installs them). `findChromium` checks that the binary actually starts and
 * otherwise throws one line that says what to do.
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

/** Flags for a browser in a test: no sandbox (tests run as root in CI, where Chromium's sandbox refuses to start). */
export const CHROMIUM_ARGS = ['--no-sandbox'];

export async function findChromium() {
  let path = process.env.CHROMIUM_PATH;
  let source = 'CHROMIUM_PATH';
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
  }
  const run = spawnSync(path, [...CHROMIUM_ARGS, '--headless', '--version'], { encoding: 'utf8', timeout: 60_000 });
  if (run.status !== 0) {
    const why = `${run.stderr ?? ''}${run.error?.message ?? ''}`.trim().split('\n')[0];
    const lib = /error while loading shared libraries: (\S+?)(\.so)?[.:]/.exec(why);
    if (lib) throw new Error(`Chromium (${path}) cannot start, ${lib[1]} is missing: run npm run setup as root, or sudo apt-get install -y libnss3 libexpat1`);
    throw new Error(`Chromium (${path}, from ${source}) does not start: ${why || `exit ${run.status}`}`);
  }
  return { path, source, version: run.stdout.trim() };
}
