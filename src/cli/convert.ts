/** softpress convert --in FILE.bin [--tokenizer tok.bin] --out DIR: a llama2.c checkpoint as a Hugging Face folder. */
import { parseArgs } from 'node:util';
import { chmodSync, copyFileSync, existsSync } from 'node:fs';
import { join } from 'node:path';
import { loadModel, saveModel } from '../models/load.js';
import type { DType } from '../tensor/index.js';

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { in: { type: 'string' }, tokenizer: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string', default: 'float32' } },
    strict: true,
  });
  if (!values.in || !values.out) throw new Error('usage: softpress convert --in FILE.bin [--tokenizer tok.bin] --out DIR [--dtype float32|float16|bfloat16]');
  if (!['float32', 'float16', 'bfloat16'].includes(values.dtype!)) throw new Error(`--dtype must be float32, float16 or bfloat16, got ${values.dtype}`);
  if (existsSync(join(values.out, 'config.json'))) throw new Error(`${values.out} already holds a model (config.json); choose an empty folder`);
  const { model, source } = loadModel(values.in, { tokenizer: values.tokenizer });
  saveModel(model, values.out, { dtype: values.dtype as DType, metadata: { source: 'llama2.c', converted_from: source } });
  // llama2.c's tokenizer keeps its own format; the loader finds DIR/tokenizer.bin.
  const tokenizer = values.tokenizer ?? findTok(source);
  if (tokenizer) {
    copyFileSync(tokenizer, join(values.out, 'tokenizer.bin'));
    chmodSync(join(values.out, 'tokenizer.bin'), 0o644);
  }
  process.stdout.write(`wrote ${values.out} (config.json, model.safetensors${tokenizer ? ', tokenizer.bin' : ''})\n`);
}

function findTok(checkpoint: string): string | undefined {
  const dir = join(checkpoint, '..');
  for (const name of ['tokenizer.bin', 'tok512.bin', 'tok4096.bin', 'tok32000.bin']) if (existsSync(join(dir, name))) return join(dir, name);
  return undefined;
}
