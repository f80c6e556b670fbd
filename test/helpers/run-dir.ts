/** A fresh temporary folder for a training test, removed after it; skips when the tokenizer is missing. */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export async function withRunDir(t: TestContext, body: (dir: string) => Promise<void>): Promise<void> {
  if (!existsSync('models/softpress-base/tokenizer.json')) {
    t.skip('models/softpress-base/tokenizer.json is missing');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'softpress-run-'));
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

/** The tiny 2-layer model of the pretraining tests (Hugging Face config fields). */
export const TINY_MODEL = { hidden_size: 64, num_hidden_layers: 2, num_attention_heads: 2, num_key_value_heads: 2, intermediate_size: 128, tie_word_embeddings: true };

/** Writes `docs` JSONL documents of `sentences` sentences made by `sentence(doc, i)`; returns the file. */
export function writeTinyCorpus(dir: string, docs: number, sentences: number, sentence: (doc: number, i: number) => string): string {
  const lines = Array.from({ length: docs }, (_, d) => JSON.stringify({ text: Array.from({ length: sentences }, (_, i) => sentence(d, i)).join(' ') }));
  const file = join(dir, 'corpus.jsonl');
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}
