/**
 * softpress ask --base DIR (--compressor DIR | --method NAME) --context FILE.txt|FILE.softctx
 *   --question TEXT [--question TEXT ...] [--ratio R | --budget K] [--max-tokens 32] [--json]
 * Compresses the context once (or loads a stored .softctx), then answers every question in one
 * batched greedy generation over the soft context, in the model's QA format (models/chat.ts:
 * [lead][context]"\nQuestion: ...\nAnswer:"); generation stops at EOS, the end of a turn or a
 * newline. Answers go to stdout (one per line, or JSON), timings to stderr.
 */
import { parseArgs } from 'node:util';
import { noGrad, tidy } from '../tensor/index.js';
import { loadModel } from '../models/load.js';
import type { Tokenizer } from '../models/tokenizer.js';
import { qaPromptFormat } from '../models/chat.js';
import { generateWithContext, loadSoftContext, repeatSoftContext, type SoftContext } from '../compress/index.js';
import { budgetOpt, numberOpt } from './args.js';
import { openCompressor, readText } from './compress.js';

const USAGE = 'usage: softpress ask --base DIR (--compressor DIR | --method NAME) --context FILE.txt|FILE.softctx --question TEXT [--question TEXT ...] [--ratio R | --budget K] [--max-tokens 32] [--json]';

/** Ids that end an answer: EOS and every token whose text holds a newline. */
export function answerStopIds(tok: Tokenizer): number[] {
  const ids = new Set<number>([tok.eos]);
  if (tok.vocabSize <= 300000) {
    for (let i = 0; i < tok.vocabSize; i++) if (tok.decode([i]).includes('\n')) ids.add(i);
  }
  return [...ids];
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      base: { type: 'string' },
      compressor: { type: 'string' },
      method: { type: 'string' },
      context: { type: 'string' },
      question: { type: 'string', multiple: true },
      ratio: { type: 'string' },
      budget: { type: 'string' },
      'max-tokens': { type: 'string', default: '32' },
      json: { type: 'boolean', default: false },
    },
    strict: true,
  });
  for (const f of ['base', 'context'] as const) if (!values[f]) throw new Error(`--${f} is required\n${USAGE}`);
  const questions = values.question ?? [];
  if (questions.length === 0) throw new Error(`give at least one --question TEXT\n${USAGE}`);
  if (questions.some((q) => q.trim() === '')) throw new Error('--question must not be empty');
  const maxTokens = numberOpt('max-tokens', values['max-tokens'], { integer: true, min: 1 })!;
  const stored = values.context!.endsWith('.softctx');
  const text = stored ? undefined : readText(values.context!);
  const timing = (s: string) => process.stderr.write(`${s}\n`);

  let t = performance.now();
  const { model, tokenizer } = loadModel(values.base!);
  if (!tokenizer) throw new Error(`${values.base}: no tokenizer next to the model`);
  timing(`load model: ${(performance.now() - t).toFixed(0)} ms`);

  let decoderLora = undefined;
  let ctx: SoftContext;
  t = performance.now();
  if (stored) {
    if (values.ratio !== undefined || values.budget !== undefined) throw new Error('--ratio/--budget do not apply to a stored .softctx (it was compressed already)');
    ctx = loadSoftContext(values.context!, model);
    const made = ctx.meta.method;
    if (values.compressor !== undefined || values.method !== undefined) {
      if (values.method !== undefined && values.method !== made) throw new Error(`${values.context} was made by '${made}', not '${values.method}'`);
      if (values.compressor !== undefined) {
        const { compressor } = openCompressor(model, values.compressor, undefined);
        if (compressor.method !== made) throw new Error(`${values.context} was made by '${made}', but --compressor holds a '${compressor.method}' compressor`);
        decoderLora = compressor.decoderLora;
      }
    } else {
      throw new Error(`give --compressor DIR (its decoder adapters, if any, are used) or --method ${made}`);
    }
    if (ctx.meta.sourceTokens.length !== 1) throw new Error(`${values.context} holds ${ctx.meta.sourceTokens.length} contexts; ask reads one`);
    timing(`load ${values.context}: ${ctx.meta.sourceTokens[0]} source tokens as ${ctx.meta.softTokens[0]} soft tokens (${ctx.meta.method}), ${(performance.now() - t).toFixed(0)} ms`);
  } else {
    const { compressor, defaultBudget } = openCompressor(model, values.compressor, values.method);
    decoderLora = compressor.decoderLora;
    const budget = budgetOpt(values.ratio, values.budget, defaultBudget);
    const ids = tokenizer.encode(text!);
    ctx = noGrad(() => compressor.compress([ids], budget));
    timing(`compress: ${ids.length} tokens -> ${ctx.meta.softTokens[0]} soft tokens (${compressor.method}), ${(performance.now() - t).toFixed(0)} ms`);
  }

  const format = qaPromptFormat(tokenizer);
  const prompts = questions.map((question) => format.tail(question));
  const stopTokens = [...new Set([...answerStopIds(tokenizer), ...format.stopIds])];
  const result = tidy(() => generateWithContext(model, repeatSoftContext(ctx, questions.length), prompts, format.lead, { maxTokens, temperature: 0, stopTokens, lora: decoderLora }));
  timing(`answer ${questions.length} question(s): prefill ${result.prefillMs.toFixed(0)} ms, decode ${result.decodeMs.toFixed(0)} ms`);
  const answers = result.tokens.map((ids) => tokenizer.decode(ids).split('\n')[0].trim());
  if (values.json) {
    process.stdout.write(JSON.stringify(questions.map((question, i) => ({ question, answer: answers[i], tokens: result.tokens[i].length })), null, 2) + '\n');
  } else {
    for (const a of answers) process.stdout.write(`${a}\n`);
  }
}
