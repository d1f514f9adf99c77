/**
 * JSON schemas of the HTTP API's request bodies and query strings (TypeBox → JSON Schema), attached to the routes
 * in routes/ as `{ schema: { body, querystring } }`. fastify validates them before a handler runs, with all
 * errors at once and without coercion (server.ts's ajv options), and server.ts's error handler answers a
 * failure as 400 CRD_ERR_BAD_REQUEST with one `details` line per problem. A schema says what a field is (its
 * type, range, length, allowed values) and refuses unknown fields; rules that relate two fields, or need state
 * (does that job exist, does the layout fit its model), stay in the handlers.
 *
 * Query strings arrive as strings (no coercion), a repeated key as an array: `Type.String` refuses both a
 * number-looking value's coercion and `?name=a&name=b`, which a handler would otherwise meet as an array.
 *
 * Bodies validated elsewhere, by a TypeBox schema of their own whose messages tests and clients rely on: a job
 * spec (protocol/job-spec.ts validateJobSpec), a sweep (protocol/sweep-spec.ts), a model import and a quantize
 * request (registry/import.ts, registry/quantize.ts).
 */
import { Type, type Static, type TSchema, type TUnsafe } from '@sinclair/typebox';
import { COLLECTIVE_OPS } from '../../protocol/control.ts';
import { JOB_KINDS, ParallelSpec } from '../../protocol/job-spec.ts';
import { JOB_STATES } from '../store/job-store.ts';

/** A string from a fixed list, as one `enum` (a union of literals would report every non-matching literal). */
const StringEnum = <const T extends readonly string[]>(values: T): TUnsafe<T[number]> => Type.Unsafe<T[number]>({ type: 'string', enum: [...values] });

/** Request objects refuse fields they do not know (a typo is a 400, not silently ignored). */
const Strict = <T extends Record<string, TSchema>>(properties: T) => Type.Object(properties, { additionalProperties: false });

/** A registry or job name (protocol/job-spec.ts's pattern). */
const NAME_PATTERN = '^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$';

// --- groups and collectives (routes/groups.ts) ---

const SegmentBytes = Type.Integer({ minimum: 4, maximum: 64 * 1024 * 1024, multipleOf: 4 });

export const FormGroupBody = Strict({
  size: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
  nodes: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 65536, uniqueItems: true })),
  segmentBytes: Type.Optional(SegmentBytes),
});
export type FormGroupBody = Static<typeof FormGroupBody>;

export const RunBody = Strict({
  op: Type.Union(COLLECTIVE_OPS.map((op) => Type.Literal(op))),
  elements: Type.Integer({ minimum: 0, maximum: 2 ** 28 }),
  seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2 ** 31 })),
  root: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
  repeats: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
  verify: Type.Optional(Type.Boolean()),
  returnResult: Type.Optional(Type.Boolean()),
});
export type RunBody = Static<typeof RunBody>;

/** Result vectors come back as JSON numbers: cap them so a response stays a few MB. */
export const MAX_RETURNED_ELEMENTS = 262_144;

export const SelfcheckBody = Strict({
  agents: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
  elements: Type.Optional(Type.Array(Type.Integer({ minimum: 0, maximum: 2 ** 26 }), { minItems: 1, maxItems: 20 })),
  segmentBytes: Type.Optional(SegmentBytes),
});
export type SelfcheckBody = Static<typeof SelfcheckBody>;

// --- dashboard login (routes/auth.ts) ---

/** The cluster token (a generated one is 32 characters); the bound keeps a stranger from having us hash megabytes. */
export const LoginBody = Strict({ token: Type.String({ minLength: 1, maxLength: 1024 }) });
export type LoginBody = Static<typeof LoginBody>;

// --- jobs (routes/jobs.ts) ---

/** GET /api/jobs/:id?after=STEP: only the metrics rows past that step (-1: all of them). */
export const JobQuery = Strict({ after: Type.Optional(Type.String({ pattern: '^-?[0-9]{1,15}$' })) });
export type JobQuery = Static<typeof JobQuery>;

/** The new layout; whether it fits the job's model and batch is the runner's check (validateJobSpec). */
export const ReplanBody = Strict({ parallel: ParallelSpec });
export type ReplanBody = Static<typeof ReplanBody>;

// --- runs (routes/runs.ts) ---

export const RunsQuery = Strict({
  /** A job name, or a prefix ending in `*`. */
  name: Type.Optional(Type.String({ maxLength: 65, pattern: '^[A-Za-z0-9_.-]*\\*?$' })),
  state: Type.Optional(StringEnum(JOB_STATES)),
  kind: Type.Optional(StringEnum(JOB_KINDS)),
});
export type RunsQuery = Static<typeof RunsQuery>;

/** `ids=A,B[,…]`; how many distinct ids it names is the handler's check. */
export const CompareQuery = Strict({ ids: Type.String({ minLength: 1, maxLength: 2048 }) });
export type CompareQuery = Static<typeof CompareQuery>;

export const ExportQuery = Strict({ format: Type.Optional(StringEnum(['json', 'csv'] as const)) });
export type ExportQuery = Static<typeof ExportQuery>;

// --- gateways (routes/gateways.ts) ---

/** What a gateway announces (protocol/gateway-announce.ts); that the URL is http(s)://host:port is cluster/gateways.ts's check. */
export const GatewayAnnouncementBody = Strict({
  name: Type.String({ pattern: NAME_PATTERN }),
  url: Type.String({ minLength: 1, maxLength: 512 }),
  adminKey: Type.String({ minLength: 1, maxLength: 512 }),
});
export type GatewayAnnouncementBody = Static<typeof GatewayAnnouncementBody>;

/** Why a deployment changed; it goes in the gateway's audit log. */
const Reason = Type.String({ minLength: 1, maxLength: 1024 });

/** Relayed to the gateway's POST /admin/deployments/:name/promote (gateway/admin.ts checks it again). */
export const PromoteBody = Strict({ version: Type.String({ maxLength: 128, pattern: '^[^@]+@v[1-9][0-9]*$' }), reason: Reason });
export type PromoteBody = Static<typeof PromoteBody>;

/** Relayed to the gateway's POST /admin/deployments/:name/rollback. */
export const RollbackBody = Strict({ reason: Reason });
export type RollbackBody = Static<typeof RollbackBody>;
