/**
 * Renders deploy/helm/meshtrain the way `helm template` would, with deploy/helm/render (Go's text/template and
 * sprig, Helm's own engine, plus the slice of Helm's layer the chart uses): there is no Helm binary on this machine
 * (not on npm, not in Debian). The renderer is built with Debian's Go and Go library packages in GOPATH mode, offline
 * (scripts/setup.sh installs them), once per version of its source: the binary is cached under
 * node_modules/.cache/meshtrain-helm-render/<sha256 of main.go and `go version`>/.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { parse } from 'yaml';

export const ROOT = resolve(import.meta.dirname, '..', '..');
export const CHART = join(ROOT, 'deploy', 'helm', 'meshtrain');
const SOURCE = join(ROOT, 'deploy', 'helm', 'render', 'main.go');
const CACHE = join(ROOT, 'node_modules', '.cache', 'meshtrain-helm-render');
/** Where Debian's golang-*-dev packages put their sources: GOPATH mode finds sprig, yaml.v2 and gojsonschema there. */
const DEBIAN_GOPATH = '/usr/share/gocode';

/** A Kubernetes object as rendered: only the fields every object has are typed. */
export interface K8sObject {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string>; annotations?: Record<string, string> };
  spec?: any; // each kind's spec is checked against its schema by kubernetes-models
  data?: Record<string, string>;
  /** The template that produced it (the renderer's `# Source:` line). */
  source: string;
}

function goEnv(): NodeJS.ProcessEnv {
  return { ...process.env, GO111MODULE: 'off', GOPATH: DEBIAN_GOPATH, GOFLAGS: '', GOCACHE: join(CACHE, 'go-build'), CGO_ENABLED: '0' };
}

/** The renderer's path, building it first when this version of main.go has not been built on this machine. */
let built: string | undefined; // this process's renderer, once found or built

export function rendererBinary(): string {
  if (built) return built;
  built = findOrBuild();
  return built;
}

function findOrBuild(): string {
  const version = spawnSync('go', ['version'], { encoding: 'utf8' });
  if (version.error || version.status !== 0) {
    throw new Error(`no Go toolchain to build deploy/helm/render (${version.error?.message ?? version.stderr.trim()}): run npm run setup`);
  }
  const hash = createHash('sha256').update(readFileSync(SOURCE)).update(version.stdout).digest('hex').slice(0, 16);
  const binary = join(CACHE, hash, 'render');
  if (existsSync(binary)) return binary;
  mkdirSync(join(CACHE, hash), { recursive: true });
  const partial = `${binary}.${process.pid}.tmp`; // two test processes may build at once: the rename is atomic
  const build = spawnSync('go', ['build', '-o', partial, SOURCE], { cwd: ROOT, env: goEnv(), encoding: 'utf8', timeout: 180_000 });
  if (build.status !== 0) {
    throw new Error(`go build deploy/helm/render failed (missing Debian Go packages? run npm run setup):\n${build.stderr}${build.error?.message ?? ''}`);
  }
  renameSync(partial, binary);
  return binary;
}

export interface Rendered {
  status: number | null;
  stdout: string;
  stderr: string;
  objects: K8sObject[];
}

/** `helm template meshtrain CHART -f …` with extra renderer arguments (--set, --namespace, --notes). */
export function render(args: string[], chart = CHART): Rendered {
  const r = spawnSync(rendererBinary(), [chart, ...args], { encoding: 'utf8', timeout: 30_000 });
  if (r.error) throw r.error;
  const objects: K8sObject[] = [];
  if (r.status === 0) {
    for (const doc of r.stdout.split(/^---$/m).slice(1)) {
      const source = /^# Source: (.+)$/m.exec(doc)?.[1] ?? '?';
      objects.push({ ...(parse(doc) as Omit<K8sObject, 'source'>), source });
    }
  }
  return { status: r.status, stdout: r.stdout, stderr: r.stderr, objects };
}
