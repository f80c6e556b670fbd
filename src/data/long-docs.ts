/**
 * The long-document evaluation set: test-split documents of at least `minTokens` tokens, for
 * streaming perplexity (CCF) and long-context evaluation. Deterministic given the split seed.
 */
import type { Tokenizer } from '../models/tokenizer.js';
import { loadDocs } from './pretrain-mix.js';
import { splitDocuments } from './splits.js';
import type { Doc } from './corpora.js';

export interface LongDoc {
  id: string;
  source: string;
  title?: string;
  tokens: number;
  bytes: number;
}

export function longTestDocs(tokenizer: Tokenizer, opts: { corpora: string[]; data?: string; seed?: number; minTokens?: number }): { list: LongDoc[]; docs: Doc[] } {
  const min = opts.minTokens ?? 2048;
  const test = splitDocuments(loadDocs({ corpora: opts.corpora, data: opts.data }), { seed: opts.seed ?? 0 }).test;
  const docs: Doc[] = [];
  const list: LongDoc[] = [];
  for (const d of test) {
    const n = tokenizer.encode(d.text).length;
    if (n < min) continue;
    docs.push(d);
    list.push({ id: d.id, source: d.source, title: d.title, tokens: n, bytes: Buffer.byteLength(d.text) });
  }
  list.sort((a, b) => b.tokens - a.tokens);
  return { list, docs };
}
