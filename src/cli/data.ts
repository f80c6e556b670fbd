/** softpress data long-docs --tokenizer FILE [--min-tokens 2048] [--corpora a,b] [--out FILE.json] */
import { parseArgs } from 'node:util';
import { writeFileSync } from 'node:fs';
import { BpeTokenizer } from '../models/bpe.js';
import { longTestDocs } from '../data/long-docs.js';

export async function run(argv: string[]): Promise<void> {
  const [sub, ...rest] = argv;
  if (sub !== 'long-docs') throw new Error('usage: softpress data long-docs --tokenizer FILE [--min-tokens 2048] [--corpora sotu,moby-dick,brown] [--seed 0] [--out FILE.json]');
  const { values } = parseArgs({
    args: rest,
    options: { tokenizer: { type: 'string' }, 'min-tokens': { type: 'string', default: '2048' }, corpora: { type: 'string', default: 'sotu,moby-dick,brown' }, seed: { type: 'string', default: '0' }, out: { type: 'string' } },
    strict: true,
  });
  if (!values.tokenizer) throw new Error('--tokenizer FILE (tokenizer.json) is required');
  const minTokens = Number(values['min-tokens']);
  if (!Number.isInteger(minTokens) || minTokens < 1) throw new Error(`--min-tokens must be a positive integer, got '${values['min-tokens']}'`);
  const { list } = longTestDocs(BpeTokenizer.fromFile(values.tokenizer), { corpora: values.corpora!.split(','), seed: Number(values.seed), minTokens });
  const text = JSON.stringify({ minTokens, split: 'test', seed: Number(values.seed), count: list.length, totalTokens: list.reduce((a, d) => a + d.tokens, 0), documents: list }, null, 2) + '\n';
  if (values.out) writeFileSync(values.out, text);
  else process.stdout.write(text);
  process.stderr.write(`${list.length} test documents with >= ${minTokens} tokens\n`);
}
