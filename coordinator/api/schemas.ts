/** JSON schemas of the HTTP API's request bodies (TypeBox → JSON Schema; fastify validates with all errors). */
import { Type, type Static } from '@sinclair/typebox';
import { COLLECTIVE_OPS } from '../../protocol/control.ts';

const SegmentBytes = Type.Integer({ minimum: 4, maximum: 64 * 1024 * 1024, multipleOf: 4 });

export const FormGroupBody = Type.Object(
  {
    size: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
    nodes: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 64 }), { minItems: 1, maxItems: 65536, uniqueItems: true })),
    segmentBytes: Type.Optional(SegmentBytes),
  },
  { additionalProperties: false },
);
export type FormGroupBody = Static<typeof FormGroupBody>;

export const RunBody = Type.Object(
  {
    op: Type.Union(COLLECTIVE_OPS.map((op) => Type.Literal(op))),
    elements: Type.Integer({ minimum: 0, maximum: 2 ** 28 }),
    seed: Type.Optional(Type.Integer({ minimum: 0, maximum: 2 ** 31 })),
    root: Type.Optional(Type.Integer({ minimum: 0, maximum: 65535 })),
    repeats: Type.Optional(Type.Integer({ minimum: 1, maximum: 1000 })),
    verify: Type.Optional(Type.Boolean()),
    returnResult: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);
export type RunBody = Static<typeof RunBody>;

/** Result vectors come back as JSON numbers: cap them so a response stays a few MB. */
export const MAX_RETURNED_ELEMENTS = 262_144;

export const SelfcheckBody = Type.Object(
  {
    agents: Type.Optional(Type.Integer({ minimum: 1, maximum: 65536 })),
    elements: Type.Optional(Type.Array(Type.Integer({ minimum: 0, maximum: 2 ** 26 }), { minItems: 1, maxItems: 20 })),
    segmentBytes: Type.Optional(SegmentBytes),
  },
  { additionalProperties: false },
);
export type SelfcheckBody = Static<typeof SelfcheckBody>;
