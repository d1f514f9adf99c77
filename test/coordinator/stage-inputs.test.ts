import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initParams, paramLayout, unflatten } from '../../model/params.ts';
import { studentFromTeacher } from '../../model/student-init.ts';

test('a student initialised from its teacher takes every other block, the embeddings and ln_f, and the first nCtx positions', () => {
  const teacherConfig = { vocabSize: 260, nCtx: 16, nLayer: 4, nHead: 2, nEmbd: 8 };
  const studentConfig = { ...teacherConfig, nCtx: 8, nLayer: 2 };
  const teacher = initParams(paramLayout(teacherConfig), 3);
  const t = unflatten(teacher, paramLayout(teacherConfig));
  const s = unflatten(studentFromTeacher(teacherConfig, teacher, studentConfig), paramLayout(studentConfig));
  assert.deepEqual(s.get('wte.weight'), t.get('wte.weight'));
  assert.deepEqual(s.get('ln_f.weight'), t.get('ln_f.weight'));
  assert.deepEqual(s.get('wpe.weight'), t.get('wpe.weight')!.subarray(0, 8 * 8));
  assert.deepEqual(s.get('h.0.attn.c_attn.weight'), t.get('h.0.attn.c_attn.weight'));
  assert.deepEqual(s.get('h.1.mlp.c_proj.weight'), t.get('h.2.mlp.c_proj.weight'));
  assert.notDeepEqual(s.get('h.1.mlp.c_proj.weight'), t.get('h.1.mlp.c_proj.weight'));
});
