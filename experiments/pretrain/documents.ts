/**
 * Extra documents for the pretraining mixture (src/data/pretrain-mix.ts ExtraDocuments):
 * restate documents (a passage, <|restate|>, the same passage again) and recall documents (a
 * passage with 2–8 planted facts, all asked back), built from the split's documents only.
 */
import type { ExtraDocuments } from '../../src/data/pretrain-mix.js';
import { formatRecall, makeRecallExamples, samplePassage } from '../../src/data/qa.js';
import { Rng } from '../../src/data/rng.js';

/**
 * Restate documents at `share` of the characters, passages of ~60 to ~500 tokens (the
 * reconstruction lengths are 128 / 256 / 512); a fraction `shuffled` of them has its words
 * shuffled, so that they can only be copied, not predicted.
 */
export function restateDocuments(share: number, shuffled = 0): ExtraDocuments {
  if (!(shuffled >= 0 && shuffled <= 1)) throw new Error(`restateShuffled must be in [0, 1], got ${shuffled}`);
  return {
    name: 'restate',
    share,
    specialTokens: true,
    make(docs, split, chars, seed) {
      const rng = new Rng(`restate:${seed}:${split}`);
      const lengths = [300, 600, 1200, 2400];
      const out: string[] = [];
      for (let made = 0; made < chars;) {
        let { text } = samplePassage(docs, rng, { chars: lengths[out.length % lengths.length]! });
        // Drawn only when asked, so mixtures without shuffling stay as they were.
        if (shuffled > 0 && rng.next() < shuffled) {
          const words = text.split(/\s+/);
          for (let i = words.length - 1; i > 0; i--) {
            const j = rng.int(i + 1);
            [words[i], words[j]] = [words[j]!, words[i]!];
          }
          text = words.join(' ');
        }
        const doc = `${text}<|restate|>${text}`;
        out.push(doc);
        made += doc.length;
      }
      return out;
    },
  };
}

/** Recall documents at `share` of the characters: 2–8 facts in 300–4,000 characters (about 65–900 tokens), asked back at many depths. */
export function recallDocuments(share: number): ExtraDocuments {
  return {
    name: 'recall',
    share,
    make(docs, split, chars, seed) {
      const out: string[] = [];
      let made = 0;
      for (let round = 0; made < chars; round++) {
        const size = [300, 600, 1200, 2400, 4000][round % 5]!;
        for (const ex of makeRecallExamples(docs, {
          seed: `${seed}:${split}:r${round}`,
          count: 8,
          chars: size,
          facts: Math.min(2 + (round % 7), Math.floor(size / 120)),
        })) {
          out.push(formatRecall(ex));
          made += out[out.length - 1]!.length;
        }
      }
      return out;
    },
  };
}
