/** Shared set-up for the gateway tests: a gateway on FakeBackends, driven with app.inject (no sockets). */
import type { TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { silentLogger } from '../../common/log.ts';
import { FakeBackend, type FakeBackendOptions } from '../../gateway/fake-backend.ts';
import type { GenerateRequest, GenerateResult, InferenceBackend, TokenLogprob } from '../../gateway/inference-backend.ts';
import type { CompletionResponse } from '../../gateway/openai.ts';
import { createGateway, type Gateway } from '../../gateway/server.ts';

export const MODEL = 'fake-char';

export interface Harness {
  gateway: Gateway;
  fake: FakeBackend;
  /** POST /v1/completions; `model` defaults to the fake. */
  complete(body: Record<string, unknown>, headers?: Record<string, string>): Promise<{ status: number; json: any; body: string; headers: Record<string, unknown> }>;
}

export function harness(t: TestContext, opts: { fake?: FakeBackendOptions; apiKey?: string; extra?: InferenceBackend[] } = {}): Harness {
  const fake = new FakeBackend({ id: MODEL, ...opts.fake });
  const backends = new Map<string, InferenceBackend>([[fake.info.id, fake], ...(opts.extra ?? []).map((b) => [b.info.id, b] as [string, InferenceBackend])]);
  const gateway = createGateway({ backends, log: silentLogger, ...(opts.apiKey ? { apiKey: opts.apiKey } : {}) });
  t.after(() => gateway.close());
  return {
    gateway,
    fake,
    async complete(body, headers = {}) {
      const res = await gateway.app.inject({ method: 'POST', url: '/v1/completions', payload: { model: MODEL, ...body }, headers });
      let json: unknown;
      try {
        json = res.json();
      } catch {
        json = undefined;
      }
      return { status: res.statusCode, json, body: res.body, headers: res.headers };
    },
  };
}

/** The `data:` payloads of an SSE body, in order ('[DONE]' stays a string). */
export function sseEvents(body: string): Array<CompletionResponse | '[DONE]' | { error: unknown }> {
  return body
    .split('\n\n')
    .filter((block) => block.trim() !== '')
    .map((block) => {
      if (!block.startsWith('data: ')) throw new Error(`not an SSE data event: ${JSON.stringify(block.slice(0, 80))}`);
      const data = block.slice(6);
      return data === '[DONE]' ? '[DONE]' : JSON.parse(data);
    });
}

/**
 * The top_logprobs of each choice of a raw JSON completion body, as [token, logprob] entries in document order
 * (JSON.parse would move integer-like keys such as "5" to the front). Keys are prefixed before parsing to keep them.
 */
export function topLogprobsInOrder(body: string): Array<Array<Array<[string, number]> | null>> {
  const prefixed = JSON.parse(body.replace(/"((?:[^"\\]|\\.)*)"(\s*:)?/g, (m, s: string, colon?: string) => (colon ? `"#${s}"${colon}` : m)));
  return prefixed['#choices'].map((c: any) =>
    c['#logprobs']['#top_logprobs'].map((d: Record<string, number> | null) => d && Object.entries(d).map(([k, v]) => [k.slice(1), v])),
  );
}

/** A GenerateRequest for `promptIds` with the gateway's defaults (greedy, 8 tokens, seed 1), overridden by `over`. */
export function generateRequest(promptIds: number[], over: Partial<GenerateRequest> = {}): GenerateRequest {
  return { promptIds, maxTokens: 8, temperature: 0, topP: 1, stop: [], seed: 1, n: 1, logprobs: undefined, echo: false, ...over };
}

export function assertLogprobClose(actual: TokenLogprob | null | undefined, expected: TokenLogprob | null | undefined, where: string): void {
  if (!expected || !actual) return assert.equal(actual ?? null, expected ?? null, where);
  assert.equal(actual.token, expected.token, where);
  assert.ok(Math.abs(actual.logprob - expected.logprob) <= 1e-5, `${where}: ${actual.logprob} vs ${expected.logprob}`);
  assert.deepEqual(actual.top.map((a) => a.token), expected.top.map((e) => e.token), where);
  actual.top.forEach((a, i) => assert.ok(Math.abs(a.logprob - expected.top[i]!.logprob) <= 1e-5, where));
}

/** Same tokens, text, finish reasons and token counts; log-probabilities equal to 1e-5. */
export function assertSameOutput(actual: GenerateResult, expected: GenerateResult, name: string): void {
  assert.equal(actual.choices.length, expected.choices.length, name);
  for (const [i, e] of expected.choices.entries()) {
    const a = actual.choices[i]!;
    const where = `${name}, choice ${i}`;
    assert.deepEqual(a.tokens.map((t) => t.id), e.tokens.map((t) => t.id), where);
    assert.equal(a.text, e.text, where);
    assert.equal(a.finishReason, e.finishReason, where);
    assert.equal(a.sampledTokens, e.sampledTokens, where);
    a.tokens.forEach((t, j) => assertLogprobClose(t.logprob, e.tokens[j]!.logprob, `${where}, token ${j}`));
  }
  assert.equal(actual.promptLogprobs?.length, expected.promptLogprobs?.length, name);
  actual.promptLogprobs?.forEach((p, j) => assertLogprobClose(p, expected.promptLogprobs![j], `${name}, prompt token ${j}`));
}

/**
 * Requests that differ in what serving must keep per request (greedy and sampled, top_p, n > 1, logprobs, echo),
 * with prompts of 5–15 tokens: the equivalence tests' set (serving-equivalence, worker-engine).
 */
export function equivalenceRequests(encode: (text: string) => number[]): GenerateRequest[] {
  const request = (prompt: string, over: Partial<GenerateRequest>) => generateRequest(encode(prompt), over);
  return [
    request('The state of the Union', { maxTokens: 10 }),
    request('We the people of the United States, in order to form', { temperature: 1, seed: 3, maxTokens: 12, logprobs: 2 }),
    request('Congress shall make no law respecting an establishment of religion', { temperature: 0.7, topP: 0.9, seed: 4, n: 3, maxTokens: 8, logprobs: 1 }),
    request('Four score and seven years ago our fathers brought forth on this continent', { temperature: 1, seed: 5, echo: true, logprobs: 1, maxTokens: 6 }),
  ];
}
