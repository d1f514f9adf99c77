/**
 * One way to declare a package's errors, in the spirit of fastify's `createError`: each package's errors.ts passes a
 * table of stable codes to `defineErrors` and extends the class it returns:
 *
 *   export class CoordinatorError extends defineErrors('CRD_ERR_', {
 *     /** A request lacks the cluster token or presents a wrong one. *\/
 *     CRD_ERR_UNAUTHORIZED: { status: 401 },
 *   }) {}
 *   throw new CoordinatorError('CRD_ERR_UNAUTHORIZED', 'no token', { cause, details });
 *
 * The table is the one definition of a code: its doc comment says what the raiser means, `status`/`closeCode` what
 * crosses an edge, `fatal` whether retrying can help. Every code must start with the package's prefix (checked
 * here, at import). Every table is also kept in `errorTables`, so README.md § Error codes is checked against all of
 * them (test/errors-documented.test.ts) and a decision such as "is this failure fatal?" reads the table
 * (`isFatal`) rather than matching code prefixes.
 */

/** What one code declares. Packages may add fields of their own (the gateway adds OpenAI's `type` and `code`). */
export interface ErrorSpec {
  /** HTTP status the error is answered with where it crosses an HTTP edge (the API, the gateway). */
  readonly status?: number;
  /** WebSocket close code the connection is closed with when the error ends it (protocol/codes.ts). */
  readonly closeCode?: number;
  /** A short phrase for the code, where the package keeps one. */
  readonly summary?: string;
  /** Retrying with the same inputs fails the same way (a bad corpus, a corrupt checkpoint): no restart. */
  readonly fatal?: boolean;
}

export interface ErrorOptions {
  cause?: unknown;
  /** One line per problem (e.g. each bad field of a request). */
  details?: string[];
}

const tables = new Map<string, Readonly<Record<string, ErrorSpec>>>();

/** Every table declared so far, by prefix (a package's table is declared when its errors.ts is imported). */
export const errorTables: ReadonlyMap<string, Readonly<Record<string, ErrorSpec>>> = tables;

/** The spec of `code` in any declared table, or undefined for a code no table declares. */
export function errorSpec(code: unknown): ErrorSpec | undefined {
  if (typeof code !== 'string') return undefined;
  for (const [prefix, table] of tables) if (code.startsWith(prefix) && Object.hasOwn(table, code)) return table[code];
  return undefined;
}

/** Whether `err` carries a code its table declares `fatal`: retrying with the same inputs cannot help. */
export const isFatal = (err: unknown): boolean => errorSpec((err as { code?: unknown } | null)?.code)?.fatal === true;

/**
 * The base class of a package's errors, for the codes of `table` (each must start with `prefix`). Its instances
 * carry `code`, `statusCode` and `closeCode` where the table gives them, `details` and `cause` where the thrower
 * does; `name` is the subclass's name. The class exposes its table as `codes` and a guard `isCode`.
 */
export function defineErrors<const P extends string, const T extends Record<string, ErrorSpec>>(prefix: P, table: T & { [K in keyof T]: K extends `${P}${string}` ? ErrorSpec : never }) {
  const wrong = Object.keys(table).filter((code) => !code.startsWith(prefix));
  if (wrong.length) throw new Error(`error codes ${wrong.join(', ')} do not start with ${prefix}`);
  if (tables.has(prefix)) throw new Error(`error prefix ${prefix} is declared twice`);
  const codes: Readonly<T> = Object.freeze(table);
  tables.set(prefix, codes);
  type Code = keyof T & string;

  class DefinedError extends Error {
    static readonly prefix: P = prefix;
    static readonly codes: Readonly<T> = codes;
    /** Whether `code` is one of this table's (e.g. a code that came back from a worker thread). */
    static isCode(code: unknown): code is Code {
      return typeof code === 'string' && Object.hasOwn(codes, code);
    }

    readonly code: Code;
    // Set only where the table gives them, so an error that never crosses an edge has no such property (fastify
    // reads `statusCode` off any error it is handed).
    declare readonly statusCode?: number;
    declare readonly closeCode?: number;
    declare readonly details?: string[];

    constructor(code: Code, message: string, options?: ErrorOptions) {
      super(message, options);
      this.name = new.target.name;
      this.code = code;
      const spec: ErrorSpec = codes[code];
      if (spec.status !== undefined) (this as { statusCode?: number }).statusCode = spec.status;
      if (spec.closeCode !== undefined) (this as { closeCode?: number }).closeCode = spec.closeCode;
      if (options?.details !== undefined) (this as { details?: string[] }).details = options.details;
    }
  }
  return DefinedError;
}

/**
 * An error as it crosses between threads (a worker's failed answer): its message, its stable code when it had one
 * (a declared code, or a Node code such as ENOENT), and the Retry-After it carried (the gateway's overload errors).
 */
export interface ThreadFailure {
  error: string;
  code?: string;
  retryAfterS?: number;
}

/** What a thread posts about `err` when it fails a request. */
export function threadFailure(err: unknown): ThreadFailure {
  const e = err as { code?: unknown; retryAfterS?: unknown } | null | undefined;
  return {
    error: err instanceof Error ? err.message : String(err),
    ...(typeof e?.code === 'string' ? { code: e.code } : {}),
    ...(typeof e?.retryAfterS === 'number' ? { retryAfterS: e.retryAfterS } : {}),
  };
}

/** A package's error class as errorOfThread re-creates it: a code guard and the (code, message, options) constructor. */
export interface CodedErrorClass<E extends Error> {
  isCode(code: unknown): boolean;
  new (code: never, message: string, options?: { cause?: unknown; retryAfterS?: number }): E;
}

/**
 * The error a failure re-creates on the receiving thread: an instance of the first of `classes` whose table holds
 * its code (its Retry-After passed on), else `otherwise(failure)`.
 */
export function errorOfThread<E extends Error>(failure: ThreadFailure, classes: ReadonlyArray<CodedErrorClass<E>>, otherwise: (failure: ThreadFailure) => E): E {
  const cls = classes.find((c) => c.isCode(failure.code));
  if (!cls) return otherwise(failure);
  return new cls(failure.code as never, failure.error, failure.retryAfterS === undefined ? undefined : { retryAfterS: failure.retryAfterS });
}
