/**
 * The demo's instruction data: a handful of questions and answers about the State of the Union (the corpus the
 * demo pre-trains on), written as chat examples for its SFT job (`data.corpus` of kind `sft`: one
 * `{"messages": [system, user, assistant]}` per line).
 *
 * The job holds out a seeded share of the examples (model/data.ts `isHeldOut`, the same rule the coordinator uses)
 * and never trains on them; its exact-match suite asks those. With the demo's seed (1337) and share (0.1) that is
 * examples 1 and 9, which is why those two are rephrasings of taught questions: they show whether the answer
 * carries over to words the model was not taught. Another seed holds out others; the split is recomputed here.
 */
import { writeFileSync } from 'node:fs';
import { isHeldOut } from '../model/data.ts';

export const SYSTEM = 'You answer questions about the State of the Union.';

export interface QA {
  question: string;
  answer: string;
}

const QAS: readonly QA[] = [
  { question: 'Who gives the State of the Union address?', answer: 'The President of the United States.' },
  { question: 'Who delivers the State of the Union?', answer: 'The President of the United States.' }, // held out: a rephrasing of 0
  { question: 'What is the State of the Union?', answer: 'A yearly report from the President to Congress on the nation.' },
  { question: 'To whom is it given?', answer: 'To Congress: the Senate and the House of Representatives.' },
  { question: 'Which part of the Constitution asks for it?', answer: 'Article II, Section 3.' },
  { question: 'Who gave the first one?', answer: 'George Washington, in January 1790.' },
  { question: 'Where was the first one given?', answer: 'In New York City, then the capital.' },
  { question: 'How often is it given?', answer: 'Once a year, early in the year.' },
  { question: 'Was it always a speech?', answer: 'No. From 1801 to 1912 it was sent to Congress in writing.' },
  { question: 'Was it always spoken?', answer: 'No. From 1801 to 1912 it was sent to Congress in writing.' }, // held out: a rephrasing of 8
  { question: 'Who made it a speech again?', answer: 'Woodrow Wilson, in 1913.' },
  { question: 'Where is it given today?', answer: 'In the chamber of the House of Representatives.' },
  { question: 'Who first gave it on the radio?', answer: 'Calvin Coolidge, in 1923.' },
  { question: 'Who first gave it on television?', answer: 'Harry Truman, in 1947.' },
  { question: 'How many addresses are in your corpus?', answer: '233, from 1790 to 2021.' },
  { question: 'Hello!', answer: 'Hello. Ask me about the State of the Union.' },
];

export interface ChatExamples {
  path: string;
  taught: QA[];
  heldOut: QA[];
}

/** Writes the examples as .jsonl to `path` and says which ones a job with this seed and held-out share trains on. */
export function writeChatExamples(path: string, seed: number, heldOutFraction: number): ChatExamples {
  const lines = QAS.map((qa) => JSON.stringify({ messages: [{ role: 'system', content: SYSTEM }, { role: 'user', content: qa.question }, { role: 'assistant', content: qa.answer }] }));
  writeFileSync(path, lines.join('\n') + '\n');
  const heldOut = QAS.filter((_, i) => isHeldOut(seed, i, heldOutFraction));
  return { path, taught: QAS.filter((qa) => !heldOut.includes(qa)), heldOut };
}
