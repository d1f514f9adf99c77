/**
 * One declaration per service for its options: name, type, default, a one-line doc, an environment variable and
 * validation, written once; the command-line parser, the `--help` text, deprecated spellings and the checks of a
 * programmatic config all come from it, so they cannot disagree.
 *
 *   export const OPTIONS = defineOptions({
 *     port: opt.int({ default: 7070, min: 0, max: 65535, arg: 'PORT', doc: 'HTTP and WebSocket port (0 = any free port)' }),
 *     headersTimeoutMs: opt.int({ default: 10_000, min: 1, arg: 'MS', aliases: ['headers-timeout'], doc: '…' }),
 *   });
 *   const { values, positionals } = parseCommandLine('coordinator', argv, [OPTIONS]); // raw strings, aliases folded
 *   const overrides = OPTIONS.fromArgs(values);       // typed, only what was given (or set in its env var)
 *   const { value, problems } = OPTIONS.resolve(overrides); // defaults filled, unknown keys and bad values listed
 *   process.stdout.write(OPTIONS.help());             // the option lines of --help
 *
 * A key's flag is its kebab-case (`headersTimeoutMs` → `--headers-timeout-ms`) unless `flag` says otherwise;
 * `flag: false` makes a setting config-only. Durations carry their unit in the flag (`-ms`); an old spelling stays
 * accepted through `aliases` and prints a one-line deprecation warning on stderr.
 */
import { intOption, parseCli, UsageError } from './cli.ts';

export { UsageError };

export type OptionType = 'string' | 'int' | 'number' | 'boolean' | 'list' | 'choice';

export interface OptionSpec<T> {
  type: OptionType;
  /** One line: what it does. --help and README's option tables show it. */
  doc: string;
  default: T;
  /** What --help shows as the default when `default` is not the whole story ("HOSTNAME-PORT", "never give up"). */
  defaultText?: string;
  /** The flag's spelling without dashes; default: the key in kebab-case; false: config only. */
  flag?: string | false;
  /** The value's placeholder in --help (PORT, MS, DIR). */
  arg?: string;
  /** Read when the flag is absent. */
  env?: string;
  /** Deprecated spellings, still accepted with a warning on stderr. */
  aliases?: readonly string[];
  short?: string;
  min?: number;
  max?: number;
  choices?: readonly string[];
  /** Turns the flag's text into the value, throwing UsageError naming the flag; replaces the type's own parsing. */
  parse?: (raw: string, flag: string) => T;
  /** A problem with a value given in code (resolve), or undefined; replaces the type's own check. */
  check?: (value: unknown, key: string) => string | undefined;
}

type Common<T> = Omit<OptionSpec<T>, 'type' | 'default' | 'choices'>;
type WithDefault<T> = Common<T> & { default: T };
type NoDefault<T> = Common<T> & { default?: undefined };

function make<T>(type: OptionType, o: Partial<OptionSpec<T>>): OptionSpec<T> {
  return Object.freeze({ ...o, type, default: o.default as T }) as OptionSpec<T>;
}

/** Builders that carry each option's value type: with a default the value is always there, without one it may be undefined. */
export const opt = {
  string: ((o: Common<string> & { default?: string }) => make('string', o)) as {
    (o: WithDefault<string>): OptionSpec<string>;
    (o: NoDefault<string>): OptionSpec<string | undefined>;
  },
  int: ((o: Common<number> & { default?: number }) => make('int', o)) as {
    (o: WithDefault<number>): OptionSpec<number>;
    (o: NoDefault<number>): OptionSpec<number | undefined>;
  },
  number: ((o: Common<number> & { default?: number }) => make('number', o)) as {
    (o: WithDefault<number>): OptionSpec<number>;
    (o: NoDefault<number>): OptionSpec<number | undefined>;
  },
  /** A switch: present or not. */
  boolean: (o: Common<boolean>): OptionSpec<boolean> => make('boolean', { ...o, default: false }),
  /** A repeatable string flag. */
  list: (o: Common<string[] | undefined>): OptionSpec<string[] | undefined> => make('list', o),
  choice: <C extends string>(choices: readonly C[], o: Common<C> & { default: C }): OptionSpec<C> => make('choice', { ...o, choices }),
};

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Specs = Record<string, OptionSpec<any>>;
export type ValuesOf<S extends Specs> = { [K in keyof S]: S[K] extends OptionSpec<infer T> ? T : never };
/** What parseArgs gives: strings, string lists and booleans, keyed by flag. */
export type RawValues = Record<string, string | string[] | boolean | undefined>;

export interface DeclaredOption {
  key: string;
  flag: string;
  spec: OptionSpec<unknown>;
}

export interface OptionSet<S extends Specs> {
  readonly specs: Readonly<S>;
  /** Every key's default, frozen. */
  readonly defaults: Readonly<ValuesOf<S>>;
  /** The options that have a flag, in declaration order. */
  readonly flags: readonly DeclaredOption[];
  /** The flags' text (keyed by flag, as parseCommandLine returns it) → typed values of the keys given, env filled in. */
  fromArgs(raw: RawValues, env?: NodeJS.ProcessEnv): Partial<ValuesOf<S>>;
  /** Defaults + overrides (undefined keeps the default), each value checked; unknown keys are problems too. */
  resolve(overrides: Record<string, unknown>): { value: ValuesOf<S>; problems: string[] };
  /** The `--flag ARG   doc (default: …; or ENV)` lines of --help. */
  help(): string;
}

const kebab = (key: string) => key.replace(/[A-Z]/g, (c) => `-${c.toLowerCase()}`);

export function defineOptions<S extends Specs>(specs: S): OptionSet<S> {
  const flags: DeclaredOption[] = Object.entries(specs)
    .filter(([, spec]) => spec.flag !== false)
    .map(([key, spec]) => ({ key, flag: (spec.flag as string | undefined) ?? kebab(key), spec }));
  const defaults = Object.freeze(Object.fromEntries(Object.entries(specs).map(([k, s]) => [k, s.default]))) as Readonly<ValuesOf<S>>;
  return Object.freeze({
    specs: Object.freeze({ ...specs }),
    defaults,
    flags: Object.freeze(flags),
    fromArgs(raw: RawValues, env: NodeJS.ProcessEnv = process.env) {
      const out: Record<string, unknown> = {};
      for (const { key, flag, spec } of flags) {
        let given = raw[flag];
        if (given === undefined && spec.env !== undefined && env[spec.env] !== undefined) given = spec.type === 'list' ? [env[spec.env]!] : env[spec.env];
        if (given === undefined) continue;
        out[key] = parseValue(spec, flag, given);
      }
      return out as Partial<ValuesOf<S>>;
    },
    resolve(overrides: Record<string, unknown>) {
      const problems: string[] = [];
      for (const key of Object.keys(overrides)) if (!(key in specs)) problems.push(`unknown setting '${key}'`);
      const given = Object.fromEntries(Object.entries(overrides).filter(([k, v]) => v !== undefined && k in specs));
      const value = { ...defaults, ...given } as ValuesOf<S>;
      for (const [key, spec] of Object.entries(specs)) {
        const v = (value as Record<string, unknown>)[key];
        if (v === undefined && spec.default === undefined) continue;
        const problem = (spec.check ?? checkValue)(v, key, spec);
        if (problem) problems.push(problem);
      }
      return { value, problems };
    },
    help: () => helpLines(flags),
  });
}

/** The flag's text → its value; a UsageError names the flag and what it takes. */
function parseValue(spec: OptionSpec<unknown>, flag: string, given: string | string[] | boolean): unknown {
  if (spec.type === 'boolean') return given === true;
  if (spec.type === 'list') {
    const items = [given].flat() as string[];
    return spec.parse ? items.map((s) => spec.parse!(s, flag)) : items;
  }
  const text = String(given);
  if (spec.parse) return spec.parse(text, flag);
  switch (spec.type) {
    case 'int':
      return intOption(text, flag, 0, spec.min, spec.max);
    case 'number': {
      const n = Number(text);
      if (text.trim() === '' || !Number.isFinite(n) || (spec.min !== undefined && n < spec.min) || (spec.max !== undefined && n > spec.max)) {
        throw new UsageError(`--${flag} must be a number in [${spec.min ?? '-∞'}, ${spec.max ?? '∞'}], got '${text}'`);
      }
      return n;
    }
    case 'choice':
      if (!spec.choices!.includes(text)) throw new UsageError(`--${flag} must be one of ${spec.choices!.join(', ')}, got '${text}'`);
      return text;
    default:
      return text;
  }
}

/** The type's own check of a value given in code (resolve): the message names the key, and the value. */
function checkValue(v: unknown, key: string, spec: OptionSpec<unknown>): string | undefined {
  switch (spec.type) {
    case 'int': {
      const [min, max] = [spec.min ?? 0, spec.max];
      if (typeof v === 'number' && Number.isInteger(v) && v >= min && (max === undefined || v <= max)) return undefined;
      if (max !== undefined) return `${key} must be ${min}–${max}, got ${String(v)}`;
      if (min === 1) return `${key} must be a positive integer${key.endsWith('Ms') ? ' (ms)' : ''}, got ${String(v)}`;
      return `${key} must be an integer ≥ ${min}, got ${String(v)}`;
    }
    case 'number':
      return typeof v === 'number' && Number.isFinite(v) && (spec.min === undefined || v >= spec.min) && (spec.max === undefined || v <= spec.max) ? undefined : `${key} must be a number, got ${String(v)}`;
    case 'choice':
      return spec.choices!.includes(v as string) ? undefined : `${key} must be one of ${spec.choices!.join(', ')}, got ${String(v)}`;
    case 'boolean':
      return typeof v === 'boolean' ? undefined : `${key} must be true or false, got ${String(v)}`;
    case 'list':
      return Array.isArray(v) && v.every((s) => typeof s === 'string') ? undefined : `${key} must be a list of strings`;
    default:
      return typeof v === 'string' ? undefined : `${key} must be a string, got ${String(v)}`;
  }
}

const HELP_COLUMN = 28; // where the docs start
const HELP_WIDTH = 118;

/** One option's --help entry: the flag and its placeholder, then the doc wrapped to the width. */
function helpEntry({ flag, spec }: DeclaredOption): string {
  const head = `  --${flag}${spec.arg ? ` ${spec.arg}` : ''}${spec.short ? `, -${spec.short}` : ''}`;
  const shownDefault = spec.defaultText ?? (spec.default === undefined || spec.type === 'boolean' ? undefined : [spec.default].flat().join(','));
  const notes = [shownDefault !== undefined ? `default: ${shownDefault}` : '', spec.env ? `or ${spec.env}` : ''].filter(Boolean);
  const text = `${spec.doc}${notes.length ? ` (${notes.join('; ')})` : ''}`;
  const words = text.split(' ');
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && HELP_COLUMN + line.length + 1 + w.length > HELP_WIDTH) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  const pad = ' '.repeat(HELP_COLUMN);
  // A flag too long for the column gets its doc on the lines below it.
  const first = head.length < HELP_COLUMN - 1 ? head.padEnd(HELP_COLUMN) + lines.shift()! : head;
  return [first, ...lines.map((l) => pad + l)].join('\n');
}

function helpLines(flags: readonly DeclaredOption[]): string {
  return flags.map(helpEntry).join('\n') + '\n';
}

/**
 * parseArgs over the flags of every set given (a flag two sets declare must have the same type there), plus
 * -h/--help; unknown options are refused with a UsageError naming them. A deprecated spelling counts as its flag,
 * after one line on `warn` (default: stderr): "PROG: --old is deprecated; use --new".
 */
export function parseCommandLine(
  prog: string,
  args: string[],
  sets: ReadonlyArray<{ flags: readonly DeclaredOption[] }>,
  warn: (line: string) => void = (line) => void process.stderr.write(line + '\n'),
): { values: RawValues & { help?: boolean }; positionals: string[] } {
  const options: Record<string, { type: 'string' | 'boolean'; multiple?: boolean; short?: string }> = { help: { type: 'boolean', short: 'h' } };
  const aliasOf = new Map<string, string>();
  for (const set of sets) {
    for (const { flag, spec } of set.flags) {
      const def = { type: spec.type === 'boolean' ? ('boolean' as const) : ('string' as const), ...(spec.type === 'list' ? { multiple: true } : {}), ...(spec.short ? { short: spec.short } : {}) };
      const seen = options[flag];
      if (seen && (seen.type !== def.type || Boolean(seen.multiple) !== Boolean(def.multiple))) throw new Error(`option --${flag} is declared twice with different types`);
      options[flag] = def;
      for (const alias of spec.aliases ?? []) {
        options[alias] = { type: def.type, ...(def.multiple ? { multiple: true } : {}) };
        aliasOf.set(alias, flag);
      }
    }
  }
  const parsed = parseCli(args, options);
  const values = { ...(parsed.values as RawValues) };
  for (const [alias, flag] of aliasOf) {
    const v = values[alias];
    if (v === undefined) continue;
    delete values[alias];
    warn(`${prog}: --${alias} is deprecated; use --${flag}`);
    if (values[flag] === undefined) values[flag] = v;
    else if (Array.isArray(v)) values[flag] = [...(values[flag] as string[]), ...v];
  }
  return { values, positionals: parsed.positionals };
}

/** A Markdown table of the options that have flags: the shape README's option tables take. */
export function markdownTable(flags: readonly DeclaredOption[]): string {
  const rows = flags.map(({ flag, spec }) => {
    const shownDefault = spec.defaultText ?? (spec.default === undefined || spec.type === 'boolean' ? '–' : `\`${[spec.default].flat().join(',')}\``);
    const was = spec.aliases?.length ? ` (formerly ${spec.aliases.map((a) => `\`--${a}\``).join(', ')}, still accepted)` : '';
    return `| \`--${flag}${spec.arg ? ` ${spec.arg.replace(/\|/g, '\\|')}` : ''}\` | ${shownDefault} | ${spec.env ? `\`${spec.env}\`` : '–'} | ${spec.doc.replace(/\|/g, '\\|')}${was} |`;
  });
  return ['| flag | default | env | what it does |', '| --- | --- | --- | --- |', ...rows].join('\n');
}

/** The flags named in the first column of a Markdown table (`--flag ARG` cells), in order. */
export function tableFlags(table: string): string[] {
  return table
    .split('\n')
    .filter((l) => l.startsWith('|'))
    .map((l) => /^\|\s*`--([a-z0-9-]+)/.exec(l)?.[1])
    .filter((f): f is string => f !== undefined);
}
