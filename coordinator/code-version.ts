/**
 * The coordinator's code version, recorded with every job it accepts (coordinator/store/run-store.ts) and every model version it
 * registers: `<package.json version>+<git commit>` with `-dirty` when the work tree has uncommitted changes, or
 * `<version>+unknown` when the coordinator does not run from a git checkout (an npm install, a container without
 * .git, no git binary). Read once at startup: git is not asked again for every job, and a tree edited while the
 * coordinator runs does not change what the running code is.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

export interface CodeVersion {
  /** package.json's "version". */
  version: string;
  /** `git rev-parse HEAD`, or 'unknown'. */
  commit: string;
  /** Uncommitted changes to tracked files when the coordinator started (false when git is unknown). */
  dirty: boolean;
}

/** The repository this coordinator's code lives in. */
const REPO_DIR = fileURLToPath(new URL('..', import.meta.url));

/** "0.1.0+3905adc1f2…" or "0.1.0+3905adc1f2…-dirty" or "0.1.0+unknown". */
export function formatCodeVersion(v: CodeVersion): string {
  return `${v.version}+${v.commit}${v.dirty ? '-dirty' : ''}`;
}

export function readCodeVersion(repoDir = REPO_DIR): CodeVersion {
  let version = 'unknown';
  try {
    version = String((JSON.parse(readFileSync(`${repoDir}/package.json`, 'utf8')) as { version?: unknown }).version ?? 'unknown');
  } catch {
    // no package.json beside the code: the version stays unknown, the commit may still be known
  }
  const git = (...args: string[]) => execFileSync('git', ['-C', repoDir, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'], timeout: 5000 }).trim();
  try {
    const commit = git('rev-parse', 'HEAD');
    if (!/^[0-9a-f]{40,64}$/.test(commit)) return { version, commit: 'unknown', dirty: false };
    // --untracked-files=no: a scratch file beside the code is not a change to the code that runs.
    const dirty = git('status', '--porcelain', '--untracked-files=no').length > 0;
    return { version, commit, dirty };
  } catch {
    return { version, commit: 'unknown', dirty: false };
  }
}
