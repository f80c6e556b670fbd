/**
 * Facebook bAbI tasks (Weston et al., 2015; data CC BY 3.0, Facebook). File format: numbered
 * lines "N text"; numbering restarting at 1 starts a new story; a line with tabs is a question:
 * "N question\tanswer\tsupporting line numbers". Each question becomes one example whose story
 * is every statement of its story before it (earlier questions are not repeated).
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';

export const BABI_LICENSE =
  'bAbI tasks data, Copyright (c) 2015-present, Facebook, Inc.; Creative Commons Attribution 3.0 Unported (CC BY 3.0)';

export interface BabiExample {
  /** Task number 1..20 (from the file name qaN_... or given). */
  task: number;
  /** Index of the story within its file (0-based). */
  storyIndex: number;
  /** Unique within a file: `qa${task}/${storyIndex}/${questionLineNumber}`. */
  id: string;
  /** The story's statements before the question, joined by the joiner (default "\n"). */
  story: string;
  question: string;
  /** As written in the file; list tasks use commas ("apple,football", "n,w"). */
  answer: string;
  /** The supporting statements, as sentences (in the order the file lists them). */
  supporting: string[];
}

export interface BabiParseOptions {
  task: number;
  /** How statements are joined into `story`; default "\n". */
  joiner?: string;
  /** Named in error messages; default "<bAbI text>". */
  source?: string;
}

/** Task number from a file name like "qa1_single-supporting-fact_train.txt", else undefined. */
export function babiTaskFromFileName(path: string): number | undefined {
  const m = /^qa(\d+)_/.exec(basename(path));
  return m ? Number(m[1]) : undefined;
}

/** Parses bAbI text; errors name the source and line. */
export function parseBabi(text: string, opts: BabiParseOptions): BabiExample[] {
  const { task } = opts;
  const joiner = opts.joiner ?? '\n';
  const source = opts.source ?? '<bAbI text>';
  if (!Number.isInteger(task) || task < 1) throw new RangeError(`${source}: bAbI task must be a positive integer, got ${task}`);
  const out: BabiExample[] = [];
  let storyIndex = -1;
  let prevNum = 0;
  // Statements of the current story by their line number, and in order.
  let byNum = new Map<number, string>();
  let statements: string[] = [];
  const lines = text.replace(/\r\n?/g, '\n').split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i] as string;
    if (line.trim() === '') continue;
    const where = `${source}:${i + 1}`;
    const m = /^\s*(\d+)\s(.*)$/.exec(line);
    if (!m) throw new Error(`${where}: expected "<number> <text>", got ${JSON.stringify(line.slice(0, 80))}`);
    const num = Number(m[1]);
    const body = m[2] as string;
    if (num === 1) {
      storyIndex++;
      byNum = new Map();
      statements = [];
    } else if (storyIndex < 0) {
      throw new Error(`${where}: the first story must start at line number 1, got ${num}`);
    } else if (num <= prevNum) {
      throw new Error(`${where}: line number ${num} does not follow ${prevNum} (stories restart at 1)`);
    }
    prevNum = num;
    if (!body.includes('\t')) {
      const sentence = body.trim();
      byNum.set(num, sentence);
      statements.push(sentence);
      continue;
    }
    const fields = body.split('\t');
    const question = (fields[0] as string).trim();
    const answer = (fields[1] ?? '').trim();
    if (question === '' || answer === '') throw new Error(`${where}: question line needs "question<TAB>answer<TAB>supporting ids"`);
    const supportIds = (fields[2] ?? '').trim() === '' ? [] : (fields[2] as string).trim().split(/\s+/).map(Number);
    const supporting = supportIds.map((n) => {
      const s = byNum.get(n);
      if (s === undefined) throw new Error(`${where}: supporting fact ${n} is not a statement of this story`);
      return s;
    });
    out.push({
      task,
      storyIndex,
      id: `qa${task}/${storyIndex}/${num}`,
      story: statements.join(joiner),
      question,
      answer,
      supporting,
    });
  }
  return out;
}

export interface BabiLoadOptions {
  /** Task number when the file name does not say (qaN_...). */
  task?: number;
  joiner?: string;
  /** Which part of the file: "train" (default), "valid" (held-out stories) or "all". */
  split?: 'train' | 'valid' | 'all';
  /** Share of each file's stories held out as validation (the last ones); default 0.1. */
  validFraction?: number;
}

/** Loads one bAbI file (any task), optionally only its train or validation stories. */
export function loadBabiFile(path: string, opts: BabiLoadOptions = {}): BabiExample[] {
  const task = opts.task ?? babiTaskFromFileName(path);
  if (task === undefined) {
    throw new Error(`${path}: cannot tell the bAbI task from the file name (expected qaN_...); pass {task}`);
  }
  let text: string;
  try {
    text = readFileSync(path, 'utf8');
  } catch (err) {
    throw new Error(`cannot read bAbI file ${path}: ${(err as Error).message}`);
  }
  const all = parseBabi(text, { task, source: path, ...(opts.joiner !== undefined ? { joiner: opts.joiner } : {}) });
  const split = opts.split ?? 'train';
  if (split === 'all') return all;
  const parts = splitBabi(all, opts.validFraction ?? 0.1);
  return parts[split];
}

/**
 * Holds out the last ceil(fraction * stories) stories (at least one when there are two or more
 * stories) as validation. Whole stories move, so no story is seen in both parts. The test files
 * of bAbI are separate; this only keeps a validation set out of the training file.
 */
export function splitBabi(examples: readonly BabiExample[], validFraction = 0.1): { train: BabiExample[]; valid: BabiExample[] } {
  if (!(validFraction >= 0 && validFraction < 1)) throw new RangeError(`validFraction must be in [0, 1), got ${validFraction}`);
  const stories = [...new Set(examples.map((e) => e.storyIndex))].sort((a, b) => a - b);
  let nValid = Math.ceil(stories.length * validFraction);
  if (validFraction > 0 && stories.length >= 2) nValid = Math.max(1, nValid);
  nValid = Math.min(nValid, Math.max(0, stories.length - 1)); // never empty the train part
  const held = new Set(stories.slice(stories.length - nValid));
  return {
    train: examples.filter((e) => !held.has(e.storyIndex)),
    valid: examples.filter((e) => held.has(e.storyIndex)),
  };
}
