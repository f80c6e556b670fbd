/**
 * softpress convert --in FILE --out DIR [--dtype float32|float16|bfloat16]: a GGUF file or a
 * llama2.c checkpoint as a Hugging Face folder (config.json, model.safetensors, and the
 * tokenizer: tokenizer.json + tokenizer_config.json from a GGUF, llama2.c's tokenizer.bin copied).
 */
import { parseArgs } from 'node:util';
import { chmodSync, copyFileSync, existsSync, mkdirSync, renameSync, writeFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { loadModel, saveModel } from '../models/load.js';
import { isGgufPath } from '../models/gguf.js';
import { readGguf } from '../io/gguf.js';
import { ggufTokenizer } from '../io/gguf-tokenizer.js';
import { resolveModelRef } from '../io/model-source.js';
import type { DType } from '../tensor/index.js';

const USAGE =
  'usage: softpress convert --in FILE.gguf|FILE.bin|NAME [--tokenizer tok.bin] --out DIR [--dtype float32|float16|bfloat16] (default float16 for GGUF, float32 for llama2.c)';

function writeJson(path: string, value: unknown): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, `${JSON.stringify(value, null, 2)}\n`);
  renameSync(tmp, path);
}

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { in: { type: 'string' }, tokenizer: { type: 'string' }, out: { type: 'string' }, dtype: { type: 'string' } },
    strict: true,
  });
  if (!values.in || !values.out) throw new Error(USAGE);
  if (values.dtype !== undefined && !['float32', 'float16', 'bfloat16'].includes(values.dtype))
    throw new Error(`--dtype must be float32, float16 or bfloat16, got ${values.dtype}`);
  if (existsSync(join(values.out, 'config.json'))) throw new Error(`${values.out} already holds a model (config.json); choose an empty folder`);
  const input = resolveModelRef(values.in);
  const { model, source } = loadModel(input, { tokenizer: values.tokenizer });
  const gguf = isGgufPath(input);
  const dtype = (values.dtype ?? (gguf ? 'float16' : 'float32')) as DType;
  mkdirSync(values.out, { recursive: true });
  if (gguf) {
    saveModel(model, values.out, { dtype, metadata: { source: 'gguf', converted_from: basename(source) } });
    const files = ggufTokenizer(readGguf(input));
    writeJson(join(values.out, 'tokenizer.json'), files.tokenizer);
    writeJson(join(values.out, 'tokenizer_config.json'), files.config);
    process.stdout.write(`wrote ${values.out} (config.json, model.safetensors in ${dtype}, tokenizer.json, tokenizer_config.json)\n`);
    return;
  }
  saveModel(model, values.out, { dtype, metadata: { source: 'llama2.c', converted_from: source } });
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
