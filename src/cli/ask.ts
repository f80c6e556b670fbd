/**
 * softpress ask --base DIR (--compressor DIR | --method NAME) --context FILE.txt|FILE.softctx
 *   --question TEXT [--question TEXT ...] [--ratio R | --budget K] [--max-tokens 32] [--json]
 * Compresses the context once (or loads a stored .softctx), then answers every question in one
 * batched greedy generation over the soft context, in the model's QA format (models/chat.ts:
 * [lead][context]"\nQuestion: ...\nAnswer:"); generation stops at EOS, the end of a turn or a
 * newline. Answers go to stdout (one per line, or JSON), timings to stderr.
 */
import { parseArgs } from 'node:util';
import { SoftContext, Softpress, type Method } from '../api.js';
import { budgetOpt, numberOpt } from './args.js';
import { readText } from './compress.js';

const USAGE =
  'usage: softpress ask --base DIR (--compressor DIR | --method NAME) --context FILE.txt|FILE.softctx --question TEXT [--question TEXT ...] [--ratio R | --budget K] [--max-tokens 32] [--json]';

/** Ids that end an answer: EOS and every token whose text holds a newline (src/api.ts). */
export { answerStopIds } from '../api.js';

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
  if (stored) {
    if (values.ratio !== undefined || values.budget !== undefined)
      throw new Error('--ratio/--budget do not apply to a stored .softctx (it was compressed already)');
    if (values.compressor === undefined && values.method === undefined) {
      using peek = await SoftContext.load(values.context!);
      throw new Error(`give --compressor DIR (its decoder adapters, if any, are used) or --method ${peek.method}`);
    }
  }
  using sp = await Softpress.open({ base: values.base!, compressor: values.compressor, method: values.method as Method | undefined });
  timing(`load model: ${(performance.now() - t).toFixed(0)} ms`);

  t = performance.now();
  let ctx: SoftContext;
  if (stored) {
    ctx = await SoftContext.load(values.context!, sp);
    const made = ctx.method;
    if (values.method !== undefined && values.method !== made) throw new Error(`${values.context} was made by '${made}', not '${values.method}'`);
    if (values.compressor !== undefined && sp.method !== made)
      throw new Error(`${values.context} was made by '${made}', but --compressor holds a '${sp.method}' compressor`);
    timing(`load ${values.context}: ${ctx.sourceTokens} source tokens as ${ctx.softTokens} soft tokens (${made}), ${(performance.now() - t).toFixed(0)} ms`);
  } else {
    const budget = budgetOpt(values.ratio, values.budget, sp.defaultBudget);
    ctx = await sp.compress(text!, { ratio: budget.ratio, budget: budget.tokens });
    timing(`compress: ${ctx.sourceTokens} tokens -> ${ctx.softTokens} soft tokens (${sp.method}), ${(performance.now() - t).toFixed(0)} ms`);
  }
  using _ctx = ctx;

  t = performance.now();
  const result = await sp.askDetailed(ctx, questions, { maxTokens });
  timing(`answer ${questions.length} question(s): prefill ${result.prefillMs.toFixed(0)} ms, decode ${result.decodeMs.toFixed(0)} ms`);
  if (values.json) {
    process.stdout.write(JSON.stringify(result.answers, null, 2) + '\n');
  } else {
    for (const a of result.answers) process.stdout.write(`${a.answer}\n`);
  }
}
