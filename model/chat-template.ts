/**
 * The chat template SFT, DPO and the exact-match evaluation share, and which of its tokens a model learns.
 * A conversation renders as (Zephyr-style markers, tokenized as plain text; `<|endoftext|>` is the one special):
 *
 *   <|system|>\n{content}\n            (optional, first)
 *   <|user|>\n{content}\n
 *   <|assistant|>\n{content}<|endoftext|>\n
 *   …
 *
 * The loss covers each assistant turn's content and its closing <|endoftext|> (so the model learns to stop), and
 * nothing else: not the markers, not the user's words. Generation prompts end with `<|assistant|>\n`.
 *
 * Each piece is tokenized on its own and the ids concatenated, so a prompt encodes to exactly the prefix of its
 * training sequence whatever BPE would merge across a boundary (every piece ends in a newline or a special anyway).
 */
import { ModelError } from './errors.ts';
import type { Tokenizer } from './tokenizer.ts';

export const CHAT_ROLES = ['system', 'user', 'assistant'] as const;
export type ChatRole = (typeof CHAT_ROLES)[number];
export interface ChatMessage {
  readonly role: ChatRole;
  readonly content: string;
}

/** One sequence: its token ids and, per token, 1 when the model is trained to predict it. */
export interface RenderedSequence {
  ids: number[];
  trained: number[];
}

const HEADER: Record<ChatRole, string> = { system: '<|system|>\n', user: '<|user|>\n', assistant: '<|assistant|>\n' };

/** Checks a conversation's shape: roles known, contents strings, system only first, at least one assistant turn when `needAssistant`. */
export function checkMessages(raw: unknown, where: string, needAssistant: boolean): ChatMessage[] {
  const fail = (msg: string): never => {
    throw new ModelError('MDL_ERR_DATA_INPUT', `${where}: ${msg}`);
  };
  if (!Array.isArray(raw) || raw.length === 0) fail('"messages" must be a non-empty array of {role, content}');
  const messages = (raw as unknown[]).map((m, i): ChatMessage => {
    const role = (m as { role?: unknown })?.role, content = (m as { content?: unknown })?.content;
    if (!CHAT_ROLES.includes(role as ChatRole)) fail(`message ${i} has role ${JSON.stringify(role)}; expected one of ${CHAT_ROLES.join(', ')}`);
    if (typeof content !== 'string') fail(`message ${i} has no string "content"`);
    if (role === 'system' && i !== 0) fail(`message ${i}: a system message may only come first`);
    return { role: role as ChatRole, content: content as string };
  });
  if (needAssistant && !messages.some((m) => m.role === 'assistant')) fail('the conversation has no assistant turn to learn');
  return messages;
}

/** The whole conversation as one training sequence (loss on assistant turns). */
export function renderChat(messages: readonly ChatMessage[], tokenizer: Tokenizer): RenderedSequence {
  const eot = endOfText(tokenizer);
  const out: RenderedSequence = { ids: [], trained: [] };
  const push = (ids: readonly number[], trained: 0 | 1) => {
    for (const id of ids) {
      out.ids.push(id);
      out.trained.push(trained);
    }
  };
  for (const m of messages) {
    push(tokenizer.encodeOrdinary(HEADER[m.role]), 0);
    if (m.role === 'assistant') {
      push(tokenizer.encodeOrdinary(m.content), 1);
      push([eot], 1);
      push(tokenizer.encodeOrdinary('\n'), 0);
    } else {
      push(tokenizer.encodeOrdinary(`${m.content}\n`), 0);
    }
  }
  return out;
}

/** The ids a model continues to answer `messages` (which end with a user turn): the conversation + the assistant header. */
export function renderPrompt(messages: readonly ChatMessage[], tokenizer: Tokenizer): number[] {
  return [...renderChat(messages, tokenizer).ids, ...tokenizer.encodeOrdinary(HEADER.assistant)];
}

/** A preference pair's two sequences: the prompt followed by the chosen and by the rejected reply. */
export function renderPair(prompt: readonly ChatMessage[], chosen: string, rejected: string, tokenizer: Tokenizer): [RenderedSequence, RenderedSequence] {
  return [renderChat([...prompt, { role: 'assistant', content: chosen }], tokenizer), renderChat([...prompt, { role: 'assistant', content: rejected }], tokenizer)];
}

export function endOfText(tokenizer: Tokenizer): number {
  const eot = tokenizer.endOfText;
  if (eot === undefined) throw new ModelError('MDL_ERR_TOKENIZER_FILE', 'the chat template needs a tokenizer with <|endoftext|>');
  return eot;
}
