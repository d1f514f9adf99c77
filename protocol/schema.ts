/**
 * Runtime schemas for message families. Each family is a table `type → TypeBox schema`; `messageParser` compiles
 * them once and returns `parse(raw: unknown): Union`, which throws PRT_ERR_UNKNOWN_TYPE or PRT_ERR_INVALID with
 * the path of the first bad field. The TypeScript types come from the same schemas (`Static<…>`), so the wire
 * and the types cannot drift apart.
 */
import { Type, type TObject, type Static } from '@sinclair/typebox';
import { TypeCompiler } from '@sinclair/typebox/compiler';
import { ProtocolError } from './errors.ts';
import type { Envelope } from './codec.ts';

export type MessageOf<S extends Record<string, TObject>> = { [K in keyof S]: Static<S[K]> }[keyof S];

export function messageParser<S extends Record<string, TObject>>(family: string, schemas: S): (raw: Envelope) => MessageOf<S> {
  const checks = new Map(Object.entries(schemas).map(([type, schema]) => [type, TypeCompiler.Compile(schema)]));
  return (raw) => {
    const type = raw.type;
    const check = checks.get(type);
    if (!check) {
      throw new ProtocolError('PRT_ERR_UNKNOWN_TYPE', `unknown ${family} message type '${String(type).slice(0, 40)}'`);
    }
    if (!check.Check(raw)) {
      const first = check.Errors(raw).First();
      const where = first?.path || '/';
      throw new ProtocolError('PRT_ERR_INVALID', `invalid ${type} message: ${where} ${first?.message ?? 'fails schema'}`);
    }
    return raw as MessageOf<S>;
  };
}

/** A message type: `type` is the literal tag, the rest are its fields; unknown fields are rejected. */
export function message<T extends string, P extends Parameters<typeof Type.Object>[0]>(type: T, fields: P) {
  return Type.Object({ type: Type.Literal(type), ...fields }, { additionalProperties: false });
}

// Shared field shapes.
export const Id = Type.String({ pattern: '^[A-Za-z0-9_.-]{1,64}$' });
export const Secret = Type.String({ minLength: 1, maxLength: 256 });
export const Text = (maxLength: number) => Type.String({ maxLength });
export const Count = (maximum: number) => Type.Integer({ minimum: 0, maximum });
/** Byte length of the raw attachment frame that follows this message. */
export const Attach = (maximum: number) => Type.Integer({ minimum: 0, maximum });
