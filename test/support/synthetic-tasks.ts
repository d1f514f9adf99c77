/**
 * Synthetic instruction and preference data whose answers can be checked exactly: the held-out tasks of the
 * stage tests and `npm run bench -- stages`. Two prompt families, each answer a few common BPE tokens, so a small
 * model learns them in minutes on a CPU while an untrained (or pre-trained-only) model scores ~0:
 *   - reversal, deterministic: "Reverse: red cat sky" → "sky cat red" (what exact-match measures);
 *   - greeting, ambiguous: "Greet: anna" → "hello anna" or "hi anna", 50/50 in the instruction data. The
 *     preference pairs prefer "hello": something SFT leaves at a coin flip, so DPO has a preference to learn that
 *     the SFT model does not already have, and reversal stays a check that DPO did not damage the rest.
 */
import { writeFileSync } from 'node:fs';

export const TASK_WORDS = ['red', 'blue', 'green', 'cat', 'dog', 'sun', 'sky', 'tree', 'book', 'car', 'fish', 'bird', 'milk', 'rain', 'road', 'star'] as const;

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = Math.imul(s ^ (s >>> 15), 1 | s);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export interface ReversalExample {
  prompt: string;
  answer: string; // the reversed words, without a sign-off
}

/** `count` distinct reversal tasks of `words` words each, in a seeded order. */
export function reversalTasks(count: number, seed: number, words = 3): ReversalExample[] {
  const next = rng(seed);
  const seen = new Set<string>();
  const out: ReversalExample[] = [];
  while (out.length < count) {
    const picked = Array.from({ length: words }, () => TASK_WORDS[Math.floor(next() * TASK_WORDS.length)]!);
    const key = picked.join(' ');
    if (seen.has(key)) continue;
    seen.add(key);
    out.push({ prompt: `Reverse: ${key}`, answer: [...picked].reverse().join(' ') });
  }
  return out;
}

export const GREET_NAMES = ['anna', 'bob', 'carl', 'dora', 'emil', 'fay', 'gus', 'hana', 'ivan', 'jade', 'kim', 'leo', 'mia', 'ned', 'olga', 'pete'] as const;

/** Reversal tasks as instruction records (JSONL lines {"prompt", "response"}). */
export function reversalRecords(tasks: readonly ReversalExample[]): Array<{ prompt: string; response: string }> {
  return tasks.map((t) => ({ prompt: t.prompt, response: t.answer }));
}

/** Greeting records, "hello" or "hi" drawn 50/50 per record, `repeats` records per name. */
export function greetRecords(seed: number, repeats = 4): Array<{ prompt: string; response: string }> {
  const next = rng(seed ^ 0x5f3759df);
  return GREET_NAMES.flatMap((name) => Array.from({ length: repeats }, () => ({ prompt: `Greet: ${name}`, response: `${next() < 0.5 ? 'hello' : 'hi'} ${name}` })));
}

/** Preference pairs: "hello <name>" chosen over "hi <name>", `repeats` per name. */
export function preferenceRecords(repeats = 4): Array<{ prompt: string; chosen: string; rejected: string }> {
  return GREET_NAMES.flatMap((name) => Array.from({ length: repeats }, () => ({ prompt: `Greet: ${name}`, chosen: `hello ${name}`, rejected: `hi ${name}` })));
}

/** Records shuffled by `seed` and written as JSONL. */
export function writeJsonl(path: string, records: readonly object[], seed = 1): void {
  const next = rng(seed), out = [...records];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(next() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  writeFileSync(path, out.map((r) => JSON.stringify(r) + '\n').join(''));
}
