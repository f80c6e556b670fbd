/** The experiments' test helpers: a tiny 2-layer model's config and a generated corpus. */
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** The tiny 2-layer model of the pretraining tests (Hugging Face config fields). */
export const TINY_MODEL = {
  hidden_size: 64,
  num_hidden_layers: 2,
  num_attention_heads: 2,
  num_key_value_heads: 2,
  intermediate_size: 128,
  tie_word_embeddings: true,
};

/** Writes `docs` JSONL documents of `sentences` sentences made by `sentence(doc, i)`; returns the file. */
export function writeTinyCorpus(dir: string, docs: number, sentences: number, sentence: (doc: number, i: number) => string): string {
  const lines = Array.from({ length: docs }, (_, d) => JSON.stringify({ text: Array.from({ length: sentences }, (_, i) => sentence(d, i)).join(' ') }));
  const file = join(dir, 'corpus.jsonl');
  writeFileSync(file, lines.join('\n') + '\n');
  return file;
}
