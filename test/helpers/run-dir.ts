/** A fresh temporary folder for a training test, removed after it; skips when the tokenizer is missing. */
import { existsSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
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

const names = ['Ahab', 'Ishmael', 'Lincoln', 'Adams', 'Starbuck', 'Jefferson'];
const things = ['harbor', 'treaty', 'river', 'whale', 'congress', 'frontier', 'lantern', 'railroad'];
const verbs = ['watched', 'described', 'praised', 'remembered', 'followed', 'measured'];

/** A corpus of 60 small documents of plain sentences (JSONL), enough for every split to hold several chunks. */
export function writeCorpus(dir: string): string {
  const lines: string[] = [];
  for (let d = 0; d < 60; d++) {
    const sentences = Array.from({ length: 12 }, (_, i) => {
      const k = d * 13 + i * 7;
      return `${names[k % names.length]} ${verbs[(k >> 1) % verbs.length]} the ${things[(k >> 2) % things.length]} near the ${things[(k + 3) % things.length]}.`;
    });
    lines.push(JSON.stringify({ id: `doc${d}`, text: sentences.join(' ') }));
  }
  const path = join(dir, 'corpus.jsonl');
  writeFileSync(path, lines.join('\n') + '\n');
  return path;
}

/** A pretraining config of a tiny model on `data` (8 steps of 2 x 32 tokens), written to dir/config.json. */
export function writeConfig(dir: string, data: string): string {
  const cfg = {
    model: { hidden_size: 32, num_hidden_layers: 2, num_attention_heads: 4, num_key_value_heads: 2, intermediate_size: 64, tie_word_embeddings: true },
    tokenizer: resolve('models/softpress-base/tokenizer.json'),
    corpora: [],
    data,
    qaShare: 0.1,
    seqLen: 32,
    batchSize: 2,
    steps: 8,
    warmup: 2,
    lr: 3e-3,
    evalEvery: 4,
    validChunks: 2,
    checkpointEvery: 3,
  };
  const path = join(dir, 'config.json');
  writeFileSync(path, JSON.stringify(cfg));
  return path;
}
