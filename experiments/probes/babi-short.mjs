// Writes a bAbI set of short stories: per task, the held-out questions (the last 10% of the
// stories of each en-10k training file, as the evaluation holds them out) whose story has at most
// K statements, each as its own story, into OUT/qaN_short.txt. The file names have no "train",
// so `softpress eval --task babi --data OUT` reads all of them. Asks whether the base reads a
// story it is short enough for (results/babi-choice.md).
//   node experiments/probes/babi-short.mjs [--data ../shared/fixtures/babi/en-10k] [--max 6] --out DIR
import { parseArgs } from 'node:util';
import { mkdirSync, readdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { loadBabiFile } from '../../dist/src/data/babi.js';

const { values } = parseArgs({
  options: {
    data: { type: 'string', default: '../shared/fixtures/babi/en-10k' },
    max: { type: 'string', default: '6' },
    out: { type: 'string' },
  },
});
if (!values.out) throw new Error('usage: node experiments/probes/babi-short.mjs [--data DIR] [--max K] --out DIR');
const max = Number(values.max);
if (!Number.isInteger(max) || max < 1) throw new Error(`--max takes a positive integer, got '${values.max}'`);
const dir = resolve(values.data);
mkdirSync(values.out, { recursive: true });
for (const f of readdirSync(dir).filter((name) => /^qa\d+_.*train.*\.txt$/.test(name))) {
  const held = loadBabiFile(join(dir, f), { split: 'valid' });
  const lines = [];
  let kept = 0;
  for (const ex of held) {
    const statements = ex.story.split('\n').filter(Boolean);
    if (statements.length > max) continue;
    statements.forEach((s, i) => lines.push(`${i + 1} ${s}`));
    // Supporting-fact ids are not used by the evaluation; 1 keeps the line well-formed.
    lines.push(`${statements.length + 1} ${ex.question}\t${ex.answer}\t1`);
    kept++;
  }
  if (kept) writeFileSync(join(values.out, `qa${held[0].task}_short.txt`), lines.join('\n') + '\n');
  console.log(`${f}: ${kept} of ${held.length} held-out questions with <= ${max} statements`);
}
