/**
 * Which chat template a model version is served with, and the templates (POST /v1/chat/completions):
 *
 *   1. A version trained here on conversations — SFT, DPO, or distillation on a .jsonl of chats (its lineage's job
 *      spec; `dataFormatOf` chat or preference) — gets the template it was trained with, model/chat-template.ts:
 *      the prompt is exactly `renderPrompt`'s ids, and `<|endoftext|>` ends the turn.
 *   2. Otherwise a `chat_template` in the version's tokenizer_config.json (an imported Hugging Face model), rendered
 *      with @huggingface/jinja as transformers' `apply_chat_template` renders it: `messages`,
 *      `add_generation_prompt: true` and the file's special tokens (`bos_token`, `eos_token`, …); the text is then
 *      tokenized with special tokens recognised, and the turn ends at `eos_token` and at generation_config.json's
 *      `eos_token_id` (besides `<|endoftext|>`, which always ends a choice).
 *   3. Otherwise none: a chat request gets 400 GW_ERR_NO_CHAT_TEMPLATE saying what to do instead.
 *
 * A quantized or merged version has no job of its own; its `training` lineage is its ancestor's (training-lineage.ts).
 */
import { Template } from '@huggingface/jinja';
import { renderPrompt } from '../model/chat-template.ts';
import type { Tokenizer } from '../model/tokenizer.ts';
import { dataFormatOf, type ResolvedJobSpec } from '../protocol/job-spec.ts';
import { GatewayError } from './errors.ts';
import type { ChatTemplate } from './inference-backend.ts';
import type { ModelFiles } from './registry-source.ts';

export const TOKENIZER_CONFIG_FILE = 'tokenizer_config.json';
export const GENERATION_CONFIG_FILE = 'generation_config.json';

/** The special tokens transformers hands a chat template by name (its special_tokens_map). */
const SPECIAL_TOKEN_KEYS = ['bos_token', 'eos_token', 'unk_token', 'sep_token', 'pad_token', 'cls_token', 'mask_token'] as const;

/** True when the lineage's job trained on conversations with model/chat-template.ts (SFT, DPO, chat distillation). */
export function trainedOnChats(lineage: Record<string, unknown>): boolean {
  const spec = lineage.spec as { kind?: unknown; data?: { corpus?: unknown } } | undefined;
  if (!spec || typeof spec !== 'object' || typeof spec.kind !== 'string' || typeof spec.data?.corpus !== 'string') return false;
  const format = dataFormatOf(spec as Pick<ResolvedJobSpec, 'kind' | 'data'>);
  return format === 'chat' || format === 'preference';
}

/** The template of a version: `files` (tokenizer_config.json, generation_config.json), `training` its job's lineage. */
export function chatTemplateFor(version: { files: ModelFiles; training: Record<string, unknown>; label: string }, tokenizer: Tokenizer): ChatTemplate {
  const { files, training, label } = version;
  if (trainedOnChats(training)) {
    if (tokenizer.endOfText === undefined) return noChatTemplate(`${label} was trained on conversations but its tokenizer has no <|endoftext|> to end a turn`);
    return meshtrainChatTemplate(tokenizer);
  }
  const config = jsonFile(files, TOKENIZER_CONFIG_FILE);
  if (typeof config === 'string') return noChatTemplate(`${label}: ${config}`);
  if (config?.chat_template === undefined) {
    return noChatTemplate(`${label} has none: it was not trained here with SFT or DPO, and it has no ${TOKENIZER_CONFIG_FILE} with a chat_template`);
  }
  const template = pickTemplate(config.chat_template);
  if (template === undefined) return noChatTemplate(`${label}: the chat_template of its ${TOKENIZER_CONFIG_FILE} is neither a string nor a list of {name, template} with a "default" one`);
  const specials: Record<string, string> = {};
  for (const key of SPECIAL_TOKEN_KEYS) {
    const content = tokenContent(config[key]);
    if (content !== undefined) specials[key] = content;
  }
  const endOfTurn = new Set<number>();
  const eos = specials.eos_token === undefined ? undefined : tokenizer.specialId(specials.eos_token) ?? singleId(tokenizer.encode(specials.eos_token));
  if (eos !== undefined) endOfTurn.add(eos);
  const generation = jsonFile(files, GENERATION_CONFIG_FILE);
  const ids = typeof generation === 'object' ? generation?.eos_token_id : undefined;
  for (const id of Array.isArray(ids) ? ids : [ids]) if (Number.isInteger(id) && id >= 0 && id < tokenizer.vocabSize) endOfTurn.add(id);
  try {
    return jinjaChatTemplate(template, (text) => tokenizer.encode(text), { specials, endOfTurn: [...endOfTurn], source: TOKENIZER_CONFIG_FILE });
  } catch (err) {
    return noChatTemplate(`${label}: the chat_template of its ${TOKENIZER_CONFIG_FILE} does not parse (${(err as Error).message})`);
  }
}

/** The template SFT and DPO train with (model/chat-template.ts): prompts tokenize exactly as in training. */
export function meshtrainChatTemplate(tokenizer: Tokenizer): ChatTemplate {
  const eot = tokenizer.endOfText;
  if (eot === undefined) throw new GatewayError('GW_ERR_INTERNAL', 'the meshtrain chat template needs a tokenizer with <|endoftext|>');
  return {
    source: 'meshtrain',
    endOfTurn: [eot],
    render(messages) {
      const late = messages.findIndex((m, i) => m.role === 'system' && i > 0);
      if (late > 0) throw badMessages(`messages[${late}]: a system message may only come first (the model was trained that way).`);
      if (messages.at(-1)?.role !== 'user') throw badMessages('The last message must be from the user: the model answers it.');
      return renderPrompt(messages, tokenizer);
    },
  };
}

/**
 * A Hugging Face chat template (Jinja), parsed once; throws when it does not parse. Each render gets `messages`,
 * `add_generation_prompt: true` and `specials`; a template that raises (raise_exception) refuses the conversation
 * with its own message (400). `encode` must recognise special tokens in the text, as transformers' tokenizers do.
 */
export function jinjaChatTemplate(template: string, encode: (text: string) => number[], opts: { specials: Record<string, string>; endOfTurn: readonly number[]; source: string }): ChatTemplate {
  const parsed = new Template(template);
  return {
    source: opts.source,
    endOfTurn: opts.endOfTurn,
    render(messages) {
      let text: string;
      try {
        text = parsed.render({ ...opts.specials, messages: messages.map((m) => ({ role: m.role, content: m.content })), add_generation_prompt: true });
      } catch (err) {
        throw badMessages(`The model's chat template (${opts.source}) refused the conversation: ${(err as Error).message}`);
      }
      return encode(text);
    },
  };
}

/** A model without a template: every render is a 400 that says why and what to do instead. */
export function noChatTemplate(why: string): ChatTemplate {
  const message = `This model has no chat template, so it is not supported in the v1/chat/completions endpoint: ${why}. ` +
    'Send a prompt you format yourself to v1/completions, or serve a version that has one: a version trained here with SFT or DPO, ' +
    `or an imported model whose ${TOKENIZER_CONFIG_FILE} has a chat_template.`;
  return {
    source: 'none',
    endOfTurn: [],
    render() {
      throw new GatewayError('GW_ERR_NO_CHAT_TEMPLATE', message, { param: 'model' });
    },
  };
}

const badMessages = (message: string) => new GatewayError('GW_ERR_BAD_REQUEST', message, { param: 'messages' });

/** A JSON object file: undefined when absent, a problem as a string when it is not a JSON object. */
function jsonFile(files: ModelFiles, name: string): Record<string, any> | undefined | string {
  const bytes = files.get(name);
  if (!bytes) return undefined;
  try {
    const doc = JSON.parse(Buffer.from(bytes).toString('utf8')) as unknown;
    if (doc && typeof doc === 'object' && !Array.isArray(doc)) return doc as Record<string, any>;
  } catch {
    // reported below
  }
  return `its ${name} is not a JSON object`;
}

/** transformers' rule: a string, or a list of {name, template} of which "default" is used. */
function pickTemplate(raw: unknown): string | undefined {
  if (typeof raw === 'string') return raw;
  if (!Array.isArray(raw)) return undefined;
  const named = raw.find((t) => t && typeof t === 'object' && t.name === 'default' && typeof t.template === 'string');
  return named?.template as string | undefined;
}

/** A special token as tokenizer_config.json writes it: a string, or an AddedToken object {content, …}. */
function tokenContent(raw: unknown): string | undefined {
  if (typeof raw === 'string') return raw;
  if (raw && typeof raw === 'object' && typeof (raw as { content?: unknown }).content === 'string') return (raw as { content: string }).content;
  return undefined;
}

const singleId = (ids: number[]) => (ids.length === 1 ? ids[0] : undefined);
