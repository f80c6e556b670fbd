/**
 * The pretraining mixture: corpus documents of a split, plus a share of
 * context–question–answer documents (bAbI stories, planted facts, cloze) and of any extra
 * documents a caller makes (ExtraDocuments), all built from the same split only, so that no test
 * document is ever trained on.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadCorpora, loadTextCorpus, type Doc } from './corpora.js';
import { splitDocuments, type SplitName } from './splits.js';
import { loadBabiFile } from './babi.js';
import { formatQA, makeClozeExamples, makeNeedleExamples } from './qa.js';
import { Rng } from './rng.js';

/** Documents of another kind mixed in at a share of the characters, made from the split's documents. */
export interface ExtraDocuments {
  /** Name in the mixture's counts and characters. */
  name: string;
  /** Share of all characters (qaShare plus the extras' shares stay below 0.9). */
  share: number;
  /** Documents of about `chars` characters in all, from `docs` of `split` (deterministic in seed and split). */
  make(docs: readonly Doc[], split: SplitName, chars: number, seed: number): string[];
  /** Its documents hold special-token strings (such as <|restate|>) that are to be read as special tokens. */
  specialTokens?: boolean;
}

export interface MixOptions {
  corpora: string[];
  /** A user corpus (.txt, folder of .txt, or .jsonl) added to the corpora. */
  data?: string;
  /** Folder of bAbI task files (qaN_*_train.txt); their train part (or valid part) is used. */
  babiDir?: string;
  /** Share of characters that are QA documents (0..0.9). */
  qaShare: number;
  /**
   * Share of the QA characters that are bAbI stories, when babiDir is given (default 0.4); the
   * rest are planted facts and masked words.
   */
  babiFraction?: number;
  /** Other documents, each at its share, made before the QA documents (in this order). */
  extra?: readonly ExtraDocuments[];
  seed: number;
}

export interface Mixture {
  texts: string[];
  /** Characters of corpus text and of QA text. */
  corpusChars: number;
  qaChars: number;
  /** Characters of each kind of extra documents. */
  extraChars: Record<string, number>;
  counts: Record<string, number>;
}

/** All documents of the chosen corpora (and user data), before splitting. */
export function loadDocs(o: Pick<MixOptions, 'corpora' | 'data'>): Doc[] {
  const docs = o.corpora.length ? loadCorpora(o.corpora) : [];
  if (o.data) docs.push(...loadTextCorpus(o.data));
  if (docs.length === 0) throw new Error('no documents: give corpora and/or a data file');
  return docs;
}

function babiFiles(dir: string): string[] {
  if (!existsSync(dir)) throw new Error(`bAbI folder not found: ${dir}`);
  return readdirSync(dir)
    .filter((f) => /^qa\d+_.*\.txt$/.test(f))
    .sort()
    .map((f) => join(dir, f));
}

/** Documents of one split plus QA and extra documents generated from that split, shuffled by seed. */
export function buildMixture(o: MixOptions, split: SplitName): Mixture {
  const extra = o.extra ?? [];
  const shares = o.qaShare + extra.reduce((a, x) => a + x.share, 0);
  if (!(o.qaShare >= 0 && extra.every((x) => x.share >= 0) && shares < 0.9)) {
    throw new Error(`qaShare and the shares of extra documents (${extra.map((x) => x.name).join(', ') || 'none'}) must be >= 0 with a sum below 0.9, got ${[o.qaShare, ...extra.map((x) => x.share)].join(', ')}`);
  }
  const babiFraction = o.babiFraction ?? 0.4;
  if (!(babiFraction >= 0 && babiFraction <= 1)) throw new Error(`babiFraction must be in [0, 1], got ${o.babiFraction}`);
  const docs = splitDocuments(loadDocs(o), { seed: o.seed })[split];
  const corpusChars = docs.reduce((a, d) => a + d.text.length, 0);
  const texts = docs.map((d) => d.text);
  const counts: Record<string, number> = { documents: docs.length, babi: 0, needle: 0, cloze: 0 };
  const corpusShare = 1 - shares;
  const qaTarget = (o.qaShare / corpusShare) * corpusChars;
  let qaChars = 0;
  const extraChars: Record<string, number> = {};
  for (const x of extra) {
    const made = x.share > 0 ? x.make(docs, split, (x.share / corpusShare) * corpusChars, o.seed) : [];
    texts.push(...made);
    counts[x.name] = made.length;
    extraChars[x.name] = made.reduce((a, t) => a + t.length, 0);
  }
  if (qaTarget > 0 || texts.length > docs.length) {
    const rng = new Rng(`mix:${o.seed}:${split}`);
    // bAbI: babiFraction of the QA characters (when given), the rest planted facts and cloze.
    if (o.babiDir) {
      const files = babiFiles(o.babiDir);
      const perFile = files.map((f) => loadBabiFile(f, { split: split === 'train' ? 'train' : 'valid' }));
      const budget = qaTarget * babiFraction;
      let used = 0;
      for (let k = 0; used < budget && k < 200000; k++) {
        const pool = perFile[rng.int(perFile.length)];
        if (!pool.length) continue;
        const ex = pool[rng.int(pool.length)];
        const text = formatQA({ context: ex.story, question: ex.question, answer: ex.answer });
        texts.push(text);
        used += text.length;
        counts.babi++;
      }
      qaChars += used;
    }
    const rest = qaTarget - qaChars;
    // Passages from ~120 to ~4,500 characters, so answers are asked at many depths and lengths.
    const lengths = [600, 1200, 2400, 4500];
    let round = 0;
    while (qaChars < qaTarget * 0.999 && round < 400) {
      const chars = lengths[round % lengths.length];
      const needles = makeNeedleExamples(docs, { seed: `${o.seed}:${split}:n${round}`, count: 8, chars });
      const clozes = makeClozeExamples(docs, { seed: `${o.seed}:${split}:c${round}`, count: 8, chars });
      for (const ex of needles) {
        texts.push(formatQA(ex));
        qaChars += texts[texts.length - 1].length;
        counts.needle++;
      }
      for (const ex of clozes) {
        texts.push(formatQA(ex));
        qaChars += texts[texts.length - 1].length;
        counts.cloze++;
      }
      round++;
      if (qaChars >= qaTarget || qaChars - (qaTarget - rest) >= rest) break;
    }
    // Shuffle so QA documents are spread through the stream.
    for (let i = texts.length - 1; i > 0; i--) {
      const j = rng.int(i + 1);
      [texts[i], texts[j]] = [texts[j], texts[i]];
    }
  }
  return { texts, corpusChars, qaChars, extraChars, counts };
}
