/**
 * The pretraining mixture: corpus documents of a split, plus a share of
 * context–question–answer documents (bAbI stories, planted facts, cloze), of recall documents
 * (several planted facts, all asked back) and of restate documents (a passage, <|restate|>, the
 * same passage again), all built from the same split only, so that no test document is ever
 * trained on. Restate documents are meant to teach the decoder to copy from its context, which
 * reconstruction (the compressors' autoencoding target) measures.
 */
import { existsSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadCorpora, loadTextCorpus, type Doc } from './corpora.js';
import { splitDocuments, type SplitName } from './splits.js';
import { loadBabiFile } from './babi.js';
import { formatQA, formatRecall, makeClozeExamples, makeNeedleExamples, makeRecallExamples, samplePassage } from './qa.js';
import { Rng } from './rng.js';

export interface MixOptions {
  corpora: string[];
  /** A user corpus (.txt, folder of .txt, or .jsonl) added to the corpora. */
  data?: string;
  /** Folder of bAbI task files (qaN_*_train.txt); their train part (or valid part) is used. */
  babiDir?: string;
  /** Share of characters that are QA documents (0..0.9). */
  qaShare: number;
  /** Share of characters that are restate documents (default 0; qaShare + restateShare < 0.9). */
  restateShare?: number;
  /**
   * Share of characters that are recall documents (default 0): passages with 2–8 planted facts,
   * all asked back, in the QA format (qaShare + restateShare + recallShare < 0.9).
   */
  recallShare?: number;
  /**
   * Fraction of restate documents whose passage has its words shuffled (default 0): a word list
   * cannot be predicted from language statistics, only copied, so the copying signal is clean.
   */
  restateShuffled?: number;
  /**
   * Share of the QA characters that are bAbI stories, when babiDir is given (default 0.4); the
   * rest are planted facts and masked words.
   */
  babiFraction?: number;
  seed: number;
}

export interface Mixture {
  texts: string[];
  /** Characters of corpus text and of QA text. */
  corpusChars: number;
  qaChars: number;
  restateChars: number;
  recallChars: number;
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

/** Documents of one split plus QA, recall and restate documents generated from that split, shuffled by seed. */
export function buildMixture(o: MixOptions, split: SplitName): Mixture {
  const restateShare = o.restateShare ?? 0;
  const recallShare = o.recallShare ?? 0;
  if (!(o.qaShare >= 0 && restateShare >= 0 && recallShare >= 0 && o.qaShare + restateShare + recallShare < 0.9)) {
    throw new Error(`qaShare, restateShare and recallShare must be >= 0 with a sum below 0.9, got ${o.qaShare}, ${restateShare} and ${recallShare}`);
  }
  if (!((o.restateShuffled ?? 0) >= 0 && (o.restateShuffled ?? 0) <= 1)) throw new Error(`restateShuffled must be in [0, 1], got ${o.restateShuffled}`);
  const babiFraction = o.babiFraction ?? 0.4;
  if (!(babiFraction >= 0 && babiFraction <= 1)) throw new Error(`babiFraction must be in [0, 1], got ${o.babiFraction}`);
  const docs = splitDocuments(loadDocs(o), { seed: o.seed })[split];
  const corpusChars = docs.reduce((a, d) => a + d.text.length, 0);
  const texts = docs.map((d) => d.text);
  const counts: Record<string, number> = { documents: docs.length, babi: 0, needle: 0, cloze: 0, restate: 0 };
  if (recallShare > 0) counts.recall = 0;
  const corpusShare = 1 - o.qaShare - restateShare - recallShare;
  const qaTarget = (o.qaShare / corpusShare) * corpusChars;
  let qaChars = 0;
  let restateChars = 0;
  const restateTarget = (restateShare / corpusShare) * corpusChars;
  if (restateTarget > 0) {
    // Passages of ~60 to ~500 tokens (the reconstruction lengths are 128 / 256 / 512).
    const rng = new Rng(`restate:${o.seed}:${split}`);
    const lengths = [300, 600, 1200, 2400];
    while (restateChars < restateTarget) {
      let { text } = samplePassage(docs, rng, { chars: lengths[counts.restate % lengths.length] });
      // Drawn only when asked, so mixtures without shuffling are those of earlier runs.
      if ((o.restateShuffled ?? 0) > 0 && rng.next() < o.restateShuffled!) {
        const words = text.split(/\s+/);
        for (let i = words.length - 1; i > 0; i--) {
          const j = rng.int(i + 1);
          [words[i], words[j]] = [words[j], words[i]];
        }
        text = words.join(' ');
        counts.restateShuffled = (counts.restateShuffled ?? 0) + 1;
      }
      const doc = `${text}<|restate|>${text}`;
      texts.push(doc);
      restateChars += doc.length;
      counts.restate++;
    }
  }
  const recallTarget = (recallShare / corpusShare) * corpusChars;
  let recallChars = 0;
  for (let round = 0; recallChars < recallTarget; round++) {
    // 2–8 facts in 300–4,000 characters (about 65–900 tokens), so facts are asked back at many depths.
    const chars = [300, 600, 1200, 2400, 4000][round % 5] as number;
    const made = makeRecallExamples(docs, { seed: `${o.seed}:${split}:r${round}`, count: 8, chars, facts: Math.min(2 + (round % 7), Math.floor(chars / 120)) });
    for (const ex of made) {
      texts.push(formatRecall(ex));
      recallChars += texts[texts.length - 1]!.length;
      counts.recall!++;
    }
  }
  if (qaTarget > 0 || restateTarget > 0 || recallTarget > 0) {
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
  return { texts, corpusChars, qaChars, restateChars, recallChars, counts };
}
