/**
 * An error crossing between the trainer's threads (node-agent/trainer/messages.ts failureOf → postMessage →
 * errorOf) comes out with its class, code and message; one without a known code becomes AGT_ERR_TRAINER.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { errorOf, failureOf } from '../../node-agent/trainer/messages.ts';
import { AgentError } from '../../node-agent/errors.ts';
import { ModelError } from '../../model/errors.ts';

/** What the receiving thread gets: the failure through a structured clone, as postMessage sends it. */
const across = (err: unknown) => errorOf(structuredClone(failureOf(err)));

test('an agent error thrown in a worker is re-created on main with its code and message', () => {
  const back = across(new AgentError('AGT_ERR_JOB_INPUT', 'token 70000 is outside the vocabulary [0, 50257)'));
  assert.ok(back instanceof AgentError);
  assert.equal(back.code, 'AGT_ERR_JOB_INPUT');
  assert.equal(back.message, 'token 70000 is outside the vocabulary [0, 50257)');
});

test('a model error thrown in a worker stays a model error with its code', () => {
  const back = across(new ModelError('MDL_ERR_BATCH', 'batch 3 does not fit'));
  assert.ok(back instanceof ModelError);
  assert.equal(back.code, 'MDL_ERR_BATCH');
  assert.equal(back.message, 'batch 3 does not fit');
});

test('an error without a known code becomes AGT_ERR_TRAINER and keeps its own code on the cause', () => {
  const plain = across(new TypeError('x is not a function'));
  assert.ok(plain instanceof AgentError);
  assert.equal(plain.code, 'AGT_ERR_TRAINER');
  assert.equal(plain.message, 'x is not a function');
  const fsError = across(Object.assign(new Error("ENOENT: no such file or directory, open 'tokenizer.json'"), { code: 'ENOENT' }));
  assert.equal((fsError as AgentError).code, 'AGT_ERR_TRAINER');
  assert.deepEqual(fsError.cause, { code: 'ENOENT' });
  assert.equal(across('a thrown string').message, 'a thrown string');
});
