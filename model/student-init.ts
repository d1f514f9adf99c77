/** Distillation's student initialised from its teacher's layers (coordinator/jobs/checkpoint-shards.ts builds the student's first checkpoint with it). */
import { paramLayout, unflatten, type GPTConfig } from './params.ts';

/**
 * A student's initial weights taken from its teacher, as DistilBERT does (Sanh et al. 2019: "taking one layer out of
 * two"): embeddings and the final LayerNorm copied, student block i from teacher block ⌊i·L_t/L_s⌋, position
 * embeddings cut to the student's context. Width and heads must match (check at submit).
 */
export function studentFromTeacher(teacherConfig: GPTConfig, teacher: Float32Array, student: GPTConfig): Float32Array {
  const t = unflatten(teacher, paramLayout(teacherConfig));
  const layout = paramLayout(student);
  const flat = new Float32Array(layout.totalSize);
  for (const p of layout.specs) {
    const m = /^h\.(\d+)\.(.+)$/.exec(p.name);
    const from = m ? `h.${Math.floor((Number(m[1]) * teacherConfig.nLayer) / student.nLayer)}.${m[2]}` : p.name;
    const src = t.get(from)!;
    flat.set(src.subarray(0, p.size), p.offset); // wpe: the first nCtx rows (row-major), everything else whole
  }
  return flat;
}
