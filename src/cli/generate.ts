/**
 * softpress generate --model PATH|NAME --prompt TEXT [--chat] [--max-tokens N] [--temperature T]
 *   [--top-k K] [--top-p P] [--seed S]
 * With --chat the prompt is one user turn in the model's own chat template, and generation stops
 * at the end of the assistant's turn.
 */
import { parseArgs } from 'node:util';
import { loadModel } from '../models/load.js';
import { generate } from '../models/generate.js';
import { renderUserPrompt } from '../models/chat.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      model: { type: 'string' },
      tokenizer: { type: 'string' },
      prompt: { type: 'string' },
      chat: { type: 'boolean', default: false },
      'max-tokens': { type: 'string', default: '64' },
      temperature: { type: 'string', default: '0.8' },
      'top-k': { type: 'string' },
      'top-p': { type: 'string', default: '0.95' },
      seed: { type: 'string', default: '0' },
    },
    strict: true,
  });
  if (!values.model)
    throw new Error('--model PATH is required (a model name such as smollm2-135m-instruct, a GGUF file, a Hugging Face folder or a llama2.c .bin)');
  if (values.prompt === undefined) throw new Error('--prompt TEXT is required');
  const num = (name: string, v: string | undefined): number | undefined => {
    if (v === undefined) return undefined;
    const n = Number(v);
    if (!Number.isFinite(n)) throw new Error(`--${name} must be a number, got '${v}'`);
    return n;
  };
  const maxTokens = num('max-tokens', values['max-tokens'])!;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) throw new Error(`--max-tokens must be a non-negative integer, got ${maxTokens}`);
  const { model, tokenizer } = loadModel(values.model, { tokenizer: values.tokenizer });
  if (!tokenizer) throw new Error(`no tokenizer found for ${values.model}; pass --tokenizer PATH`);
  const chat = values.chat ? renderUserPrompt(tokenizer, values.prompt) : undefined;
  const prompt = chat ? tokenizer.encode(chat.text, { bos: true, allowSpecial: true }) : tokenizer.encode(values.prompt, { bos: true });
  if (prompt.length === 0) throw new Error('--prompt is empty and the model adds no BOS: give some text');
  // Decode the whole sequence each step and print what is new, so multi-byte characters and
  // leading-space rules come out right.
  const generated: number[] = [];
  const promptText = tokenizer.decode(prompt);
  let printed = 0;
  generate(model, [prompt], {
    maxTokens,
    temperature: num('temperature', values.temperature),
    topK: num('top-k', values['top-k']),
    topP: num('top-p', values['top-p']),
    seed: num('seed', values.seed),
    stopTokens: chat ? chat.stopIds : [tokenizer.eos, tokenizer.bos],
    onToken: (_, id) => {
      generated.push(id);
      const text = tokenizer.decode([...prompt, ...generated]).slice(promptText.length);
      const stable = text.endsWith('\uFFFD') ? text.slice(0, -1) : text;
      if (stable.length > printed) {
        process.stdout.write(stable.slice(printed));
        printed = stable.length;
      }
    },
  });
  process.stdout.write('\n');
}
