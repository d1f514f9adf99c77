/**
 * Targeted mutations of every message type's fixture (fixtures.ts), each with the outcome the protocol's rules
 * predict: wrong field types, numbers out of range or not integers, strings over their length or off their
 * pattern, huge strings, arrays over their size, missing required (rejected) and optional (accepted) fields, extra
 * fields, renamed or missing types. Predictions come from reading the schema's declared bounds here, not from the
 * parser under test. Used by the in-process mutation test and, sampled, by the real-process hostile tests.
 */
import { Kind, OptionalKind, type TObject, type TSchema } from '@sinclair/typebox';
import type { ProtocolErrorCode } from '../../protocol/errors.ts';
import { allTypeNames, type Family } from './fixtures.ts';

export type Prediction = ProtocolErrorCode | 'accept';

export interface Mutation {
  family: Family['name'];
  type: string; // the fixture's message type
  name: string; // what was done, e.g. "/capabilities/cores: 65537 (above maximum 65536)"
  msg: Record<string, unknown>;
  expect: Prediction;
}

const HUGE = 'x'.repeat(1 << 20); // 1 MiB: above every string limit, below every frame limit

type Path = string[];

function at(msg: Record<string, unknown>, path: Path): Record<string, unknown> {
  let o = msg;
  for (const k of path) o = o[k] as Record<string, unknown>;
  return o;
}

/** A copy of `base` with the field at `path` set to `value` (or deleted when value is `DELETE`). */
const DELETE = Symbol('delete');
function withField(base: Record<string, unknown>, path: Path, value: unknown): Record<string, unknown> {
  const copy = structuredClone(base);
  const parent = at(copy, path.slice(0, -1));
  if (value === DELETE) delete parent[path.at(-1)!];
  else parent[path.at(-1)!] = value;
  return copy;
}

/** A value of the wrong JSON type for `schema`, whatever its bounds. */
function wrongType(schema: TSchema): unknown {
  switch (schema[Kind]) {
    case 'String':
      return 12345;
    case 'Integer':
    case 'Number':
      return '7';
    case 'Boolean':
      return 1;
    case 'Array':
    case 'Tuple':
      return { a: 1 };
    case 'Object':
    case 'Record':
      return [1];
    case 'Literal':
      return typeof schema.const === 'string' ? 12345 : 'not-a-number';
    default:
      return [[true]]; // a union of objects, literals or scalars: no member takes a nested array
  }
}

/** Values that break `schema`'s declared bounds, each with a description. */
function outOfBounds(schema: TSchema): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  const kind = schema[Kind];
  if (kind === 'Integer' || kind === 'Number') {
    const { minimum, maximum, exclusiveMinimum } = schema as { minimum?: number; maximum?: number; exclusiveMinimum?: number };
    if (maximum !== undefined) out.push([`${maximum + 1} (above maximum ${maximum})`, maximum + 1]);
    if (minimum !== undefined) out.push([`${minimum - 1} (below minimum ${minimum})`, minimum - 1]);
    if (exclusiveMinimum !== undefined) out.push([`${exclusiveMinimum} (not above ${exclusiveMinimum})`, exclusiveMinimum]);
    if (kind === 'Integer') out.push(['1.5 (not an integer)', (minimum ?? 0) + 1.5]);
    out.push(['NaN', Number.NaN], ['Infinity', Number.POSITIVE_INFINITY]);
  } else if (kind === 'String') {
    const { maxLength, minLength, pattern } = schema as { maxLength?: number; minLength?: number; pattern?: string };
    if (maxLength !== undefined) out.push([`${maxLength + 1} characters (above maxLength ${maxLength})`, 'x'.repeat(maxLength + 1)]);
    if (minLength) out.push([`'' (below minLength ${minLength})`, '']);
    if (pattern !== undefined && !new RegExp(pattern).test('no spaces or slashes/ ')) out.push([`off its pattern ${pattern}`, 'no spaces or slashes/ ']);
    if (maxLength !== undefined || pattern !== undefined) out.push(['a 1 MiB string', HUGE]);
  } else if (kind === 'Literal') {
    out.push([`another value than ${String(schema.const)}`, typeof schema.const === 'number' ? schema.const + 7 : `${String(schema.const)}-not`]);
  } else if (kind === 'Union' && (schema.anyOf as TSchema[]).every((s) => s[Kind] === 'Literal')) {
    out.push(['a value no member allows', typeof (schema.anyOf as TSchema[])[0]!.const === 'number' ? 99 : 'zz-none-of-these']);
  }
  return out;
}

/** Array and record mutations that need the fixture's current value. */
function sizeMutations(schema: TSchema, value: unknown): Array<[string, unknown]> {
  const out: Array<[string, unknown]> = [];
  if (schema[Kind] === 'Array' && Array.isArray(value) && value.length > 0) {
    const maxItems = schema.maxItems as number | undefined;
    if (maxItems !== undefined && maxItems <= 4096) out.push([`${maxItems + 1} items (above maxItems ${maxItems})`, Array.from({ length: maxItems + 1 }, (_, i) => structuredClone(value[i % value.length]))]);
    if (schema.uniqueItems === true && value.length > 0) out.push(['a repeated item (uniqueItems)', [...value, structuredClone(value[0])]]);
  }
  if (schema[Kind] === 'Record' && value && typeof value === 'object') {
    const first = Object.values(value as Record<string, unknown>)[0];
    const maxProperties = schema.maxProperties as number | undefined;
    if (first !== undefined) out.push(["a key off the key pattern ('bad key/')", { ...(value as object), 'bad key/': first }]);
    if (first !== undefined && maxProperties !== undefined && maxProperties <= 1000) {
      out.push([`${maxProperties + 1} keys (above maxProperties ${maxProperties})`, Object.fromEntries(Array.from({ length: maxProperties + 1 }, (_, i) => [`f${i}`, first]))]);
    }
  }
  return out;
}

function fieldMutations(family: Family['name'], type: string, base: Record<string, unknown>, schema: TObject, path: Path, out: Mutation[]): void {
  const add = (name: string, msg: Record<string, unknown>, expect: Prediction) => out.push({ family, type, name, msg, expect });
  const where = (p: Path) => `/${p.join('/')}`;
  const value = at(base, path);
  add(`${where(path)}: an extra field`, withField(base, [...path, 'zzExtra'], 1), 'PRT_ERR_INVALID');
  for (const [key, sub] of Object.entries(schema.properties)) {
    if (path.length === 0 && key === 'type') continue;
    const p = [...path, key];
    const present = Object.prototype.hasOwnProperty.call(value, key);
    const optional = sub[OptionalKind] === 'Optional';
    if (present) add(`${where(p)}: missing (${optional ? 'optional' : 'required'})`, withField(base, p, DELETE), optional ? 'accept' : 'PRT_ERR_INVALID');
    else if (!optional) continue; // cannot happen with a valid fixture
    add(`${where(p)}: wrong type`, withField(base, p, wrongType(sub)), 'PRT_ERR_INVALID');
    add(`${where(p)}: null`, withField(base, p, null), 'PRT_ERR_INVALID');
    for (const [what, v] of outOfBounds(sub)) add(`${where(p)}: ${what}`, withField(base, p, v), 'PRT_ERR_INVALID');
    if (!present) continue;
    for (const [what, v] of sizeMutations(sub, value[key])) add(`${where(p)}: ${what}`, withField(base, p, v), 'PRT_ERR_INVALID');
    if (sub[Kind] === 'String' && typeof sub.maxLength === 'number' && sub.pattern === undefined && sub.maxLength <= 4096) {
      add(`${where(p)}: exactly maxLength ${sub.maxLength} characters`, withField(base, p, 'é'.repeat(sub.maxLength)), 'accept');
    }
    if (sub[Kind] === 'Object') fieldMutations(family, type, base, sub as TObject, p, out);
  }
}

/** Every mutation of every type of `family`, the unmodified fixture first (accepted). */
export function mutationsOf(family: Family): Mutation[] {
  const out: Mutation[] = [];
  for (const [type, schema] of Object.entries(family.schemas)) {
    const base = family.examples[type] as Record<string, unknown>;
    const add = (name: string, msg: Record<string, unknown>, expect: Prediction) => out.push({ family: family.name, type, name, msg, expect });
    add('the fixture as it is', structuredClone(base), 'accept');
    fieldMutations(family.name, type, base, schema, [], out);
    add('type renamed to one no family has', { ...base, type: 'no.such.type' }, 'PRT_ERR_UNKNOWN_TYPE');
    const foreign = allTypeNames.find((t) => !Object.prototype.hasOwnProperty.call(family.schemas, t));
    if (foreign) add(`type renamed to '${foreign}' of another family`, { ...base, type: foreign }, 'PRT_ERR_UNKNOWN_TYPE');
    add('type as a number', { ...base, type: 7 }, 'PRT_ERR_MALFORMED');
    add('type missing', Object.fromEntries(Object.entries(base).filter(([k]) => k !== 'type')), 'PRT_ERR_MALFORMED');
    if (!('attach' in schema.properties)) add('declares an attachment its type does not take', { ...base, attach: 4 }, 'PRT_ERR_INVALID');
  }
  return out;
}

/** The close code's name for a prediction, for messages. */
export function describeMutation(m: Mutation): string {
  return `${m.family} ${m.type} — ${m.name} → ${m.expect}`;
}
