/**
 * `softpress tokenizer <action>`:
 *   train   learn a byte-level BPE on the TRAIN split of corpora and write DIR/tokenizer.json
 *   encode  show how a tokenizer.json splits a text
 * Progress goes to stderr; results to stdout.
 */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { loadCorpora, loadTextCorpus, CORPUS_NAMES, type Doc } from '../data/corpora.js';
import { splitDocuments } from '../data/splits.js';
import { BpeTokenizer, trainBpe, SOFTPRESS_SPECIAL_TOKENS } from '../models/bpe.js';

const USAGE = `usage:
  softpress tokenizer train --out DIR [--vocab 8192] [--corpora ${CORPUS_NAMES.join(',')}] [--data FILE]
                            [--seed 0] [--min-frequency 2] [--hf-config]
      Trains on the train split only (document-level, by seed) and writes DIR/tokenizer.json
      (with --hf-config also DIR/tokenizer_config.json). --data adds a user corpus (.txt, .jsonl
      or a directory); when --data is given without --corpora, only the user corpus is used.
  softpress tokenizer encode --tokenizer FILE [--special] TEXT...
      Prints the ids and tokens of TEXT (with --special, special-token strings are parsed).`;

function fail(msg: string): never {
  throw new Error(`softpress tokenizer: ${msg}\n${USAGE}`);
}

function intFlag(name: string, value: string | undefined, fallback: number, min: number): number {
  if (value === undefined) return fallback;
  if (!/^-?\d+$/.test(value.trim())) fail(`--${name} must be an integer, got ${JSON.stringify(value)}`);
  const n = Number(value);
  if (n < min) fail(`--${name} must be >= ${min}, got ${n}`);
  return n;
}

function parse(argv: string[], options: NonNullable<ParseArgsConfig['options']>) {
  try {
    return parseArgs({ args: argv, options, strict: true, allowPositionals: true });
  } catch (err) {
    return fail((err as Error).message);
  }
}

function log(msg: string): void {
  process.stderr.write(`${msg}\n`);
}

/** Characters per token of the documents, and the token count. */
function charsPerToken(tok: BpeTokenizer, docs: readonly Doc[]): { chars: number; tokens: number; ratio: number } {
  let chars = 0;
  let tokens = 0;
  for (const d of docs) {
    chars += d.text.length;
    tokens += tok.encode(d.text).length;
  }
  return { chars, tokens, ratio: tokens > 0 ? chars / tokens : 0 };
}

async function train(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    out: { type: 'string' },
    vocab: { type: 'string' },
    corpora: { type: 'string' },
    data: { type: 'string' },
    seed: { type: 'string' },
    'min-frequency': { type: 'string' },
    'hf-config': { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  if (positionals.length > 0) fail(`unexpected argument ${JSON.stringify(positionals[0])}`);
  const out = values.out as string | undefined;
  if (!out) fail('--out DIR is required');
  const base = SOFTPRESS_SPECIAL_TOKENS.length + 256;
  const vocabSize = intFlag('vocab', values.vocab as string | undefined, 8192, base);
  const seed = intFlag('seed', values.seed as string | undefined, 0, Number.MIN_SAFE_INTEGER);
  const minFrequency = intFlag('min-frequency', values['min-frequency'] as string | undefined, 2, 1);
  const dataPath = values.data as string | undefined;
  const corporaFlag = values.corpora as string | undefined;
  const corpusNames = (corporaFlag ?? (dataPath ? '' : CORPUS_NAMES.join(',')))
    .split(',')
    .map((s) => s.trim())
    .filter((s) => s !== '');
  for (const n of corpusNames) {
    if (!(CORPUS_NAMES as readonly string[]).includes(n)) fail(`unknown corpus "${n}" in --corpora (known: ${CORPUS_NAMES.join(', ')})`);
  }

  const t0 = Date.now();
  const docs: Doc[] = loadCorpora(corpusNames);
  if (dataPath) docs.push(...loadTextCorpus(dataPath));
  if (docs.length === 0) fail('no documents: give --corpora and/or --data');
  const splits = splitDocuments(docs, { seed });
  const trainChars = splits.train.reduce((s, d) => s + d.text.length, 0);
  log(
    `tokenizer: ${docs.length} documents from ${[...corpusNames, ...(dataPath ? [dataPath] : [])].join(', ')}; ` +
      `split (seed ${seed}) train ${splits.train.length} / valid ${splits.valid.length} / test ${splits.test.length}; ` +
      `training on ${(trainChars / 1e6).toFixed(2)} M chars (loaded in ${((Date.now() - t0) / 1000).toFixed(1)} s)`,
  );

  const tok = trainBpe(
    splits.train.map((d) => d.text),
    {
      vocabSize,
      minFrequency,
      onProgress: (p) => {
        if (p.phase === 'count') {
          log(`tokenizer: ${p.words} pieces, ${p.wordTypes} distinct (${p.seconds.toFixed(1)} s)`);
        } else if (p.phase === 'merge' && p.merges % 1000 === 0) {
          log(`tokenizer: ${p.merges}/${p.targetMerges} merges (${p.seconds.toFixed(1)} s)`);
        } else if (p.phase === 'done') {
          log(`tokenizer: done, ${p.merges} merges in ${p.seconds.toFixed(1)} s`);
        }
      },
    },
  );
  const path = join(out, 'tokenizer.json');
  tok.save(path);
  if (values['hf-config']) {
    mkdirSync(out, { recursive: true });
    writeFileSync(join(out, 'tokenizer_config.json'), `${JSON.stringify(tok.tokenizerConfig(), null, 2)}\n`);
  }
  // Check the file we wrote reads back to the same tokenizer before reporting.
  const reloaded = BpeTokenizer.fromFile(path);
  const valid = charsPerToken(reloaded, splits.valid);
  const lines = [
    `wrote ${path}`,
    `vocab ${reloaded.vocabSize} (${SOFTPRESS_SPECIAL_TOKENS.length} special + 256 bytes + ${reloaded.merges.length} merges)` +
      (reloaded.vocabSize < vocabSize ? ` -- fewer than the ${vocabSize} asked: no pair left with frequency >= ${minFrequency}` : ''),
    `valid split: ${valid.chars} chars, ${valid.tokens} tokens, ${valid.ratio.toFixed(3)} chars/token`,
  ];
  const sources = [...new Set(splits.valid.map((d) => d.source))];
  if (sources.length > 1) {
    for (const s of sources) {
      const r = charsPerToken(
        reloaded,
        splits.valid.filter((d) => d.source === s),
      );
      lines.push(`  ${s}: ${r.ratio.toFixed(3)} chars/token (${r.tokens} tokens)`);
    }
  }
  process.stdout.write(`${lines.join('\n')}\n`);
}

async function encode(argv: string[]): Promise<void> {
  const { values, positionals } = parse(argv, {
    tokenizer: { type: 'string' },
    special: { type: 'boolean' },
    help: { type: 'boolean', short: 'h' },
  });
  if (values.help) {
    process.stdout.write(`${USAGE}\n`);
    return;
  }
  const file = values.tokenizer as string | undefined;
  if (!file) fail('--tokenizer FILE is required');
  if (positionals.length === 0) fail('give the TEXT to encode');
  const tok = BpeTokenizer.fromFile(file);
  const ids = tok.encode(positionals.join(' '), { allowSpecial: values.special === true });
  process.stdout.write(`${JSON.stringify({ ids, tokens: ids.map((id) => tok.idToToken(id)) })}\n`);
}

export async function run(argv: string[]): Promise<void> {
  const [action, ...rest] = argv;
  switch (action) {
    case 'train':
      return train(rest);
    case 'encode':
      return encode(rest);
    case undefined:
    case 'help':
    case '--help':
    case '-h':
      process.stdout.write(`${USAGE}\n`);
      return;
    default:
      fail(`unknown action ${JSON.stringify(action)}`);
  }
}
