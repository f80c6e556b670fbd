/**
 * A method's training recipe: the settings its paper (or official code) trains with, in one
 * place per method (exported by the method's file as `<METHOD>_RECIPE` and registered with it),
 * used by `softpress train` for every flag the user does not give, and recorded in the card
 * (compressor.json, "recipe") of every compressor it trains.
 *
 * Every value carries where it comes from:
 *   'paper'      the paper as summarised in papers/<method>.md
 *   'code'       the method's official code (when the summary does not say)
 *   'not stated' neither says: softpress's own choice, kept
 * and `deviations` lists each place where softpress's default differs from the paper, or where
 * our compute forces a smaller setting, with the reason.
 */
import type { Stage } from './types.js';

export type RecipeSource = 'paper' | 'code' | 'not stated';

/** One setting: its value and where it comes from. */
export interface RecipeValue<T> {
  value: T;
  source: RecipeSource;
  /** A word on it (e.g. "linear or cosine; cosine here"). */
  note?: string;
}

/** The optimiser of a training stage (AdamW). */
export interface StageRecipe {
  lr: RecipeValue<number>;
  /** The rate at the end of the decay, as a fraction of lr (0: to zero). */
  minLrFraction: RecipeValue<number>;
  /** Linear warm-up, as a fraction of the steps. */
  warmupFraction: RecipeValue<number>;
  schedule: RecipeValue<'cosine' | 'linear'>;
  weightDecay: RecipeValue<number>;
  betas: RecipeValue<[number, number]>;
  /** Gradient-norm clipping. */
  clip: RecipeValue<number>;
}

export interface RecipeDeviation {
  /** The setting, e.g. "options.segmentLen" or "train.docLen". */
  key: string;
  paper: string;
  ours: string;
  why: string;
}

export interface MethodRecipe {
  method: string;
  /** The paper and code the values come from. */
  source: string;
  /** Method options (compressor constructor defaults) with their provenance. */
  options: Record<string, RecipeValue<unknown>>;
  /** The optimiser per training stage. */
  stages: Partial<Record<Stage, StageRecipe>>;
  /** Training data settings (ratios, context lengths, CCF's documents and reservoir). */
  train: Record<string, RecipeValue<unknown>>;
  deviations: RecipeDeviation[];
}

/** The plain values of a recipe's options (what a constructor defaults to). */
export function recipeOptions(r: MethodRecipe): Record<string, unknown> {
  return Object.fromEntries(Object.entries(r.options).map(([k, v]) => [k, v.value]));
}

/** The stage recipe for a stage mix: the first listed stage that the recipe has, else its first stage. */
export function stageRecipe(r: MethodRecipe, stages: readonly Stage[]): { stage: Stage; recipe: StageRecipe } {
  for (const s of stages) {
    const rec = r.stages[s];
    if (rec) return { stage: s, recipe: rec };
  }
  const [s, rec] = Object.entries(r.stages)[0] as [Stage, StageRecipe];
  return { stage: s, recipe: rec };
}

const fmt = (v: unknown): string => (Array.isArray(v) ? `(${v.join(', ')})` : typeof v === 'number' ? String(v) : JSON.stringify(v));

/** A Markdown table of a recipe: setting, value, source (and the deviations below it). */
export function recipeTable(r: MethodRecipe): string {
  const rows: string[] = ['| setting | value | source |', '|---|---|---|'];
  const row = (key: string, v: RecipeValue<unknown>) => rows.push(`| ${key} | ${fmt(v.value)} | ${v.source}${v.note ? ` (${v.note})` : ''} |`);
  for (const [k, v] of Object.entries(r.options)) row(`options.${k}`, v);
  for (const [s, rec] of Object.entries(r.stages)) for (const [k, v] of Object.entries(rec)) row(`${s}.${k}`, v as RecipeValue<unknown>);
  for (const [k, v] of Object.entries(r.train)) row(`train.${k}`, v);
  const out = [`**${r.method}** — ${r.source}`, '', ...rows];
  if (r.deviations.length) {
    out.push('', '| deviation | paper | ours | why |', '|---|---|---|---|');
    for (const d of r.deviations) out.push(`| ${d.key} | ${d.paper} | ${d.ours} | ${d.why} |`);
  }
  return out.join('\n');
}

/** Shorthands for recipe entries. */
export const paper = <T>(value: T, note?: string): RecipeValue<T> => ({ value, source: 'paper', ...(note ? { note } : {}) });
export const code = <T>(value: T, note?: string): RecipeValue<T> => ({ value, source: 'code', ...(note ? { note } : {}) });
export const ours = <T>(value: T, note?: string): RecipeValue<T> => ({ value, source: 'not stated', ...(note ? { note } : {}) });

/**
 * One report of every method's recipe (results/recipes.md): a table of each setting, softpress's
 * default and the paper's value (or "not stated"), and one table of every deviation from the
 * paper with its reason.
 */
export function recipeReport(recipes: readonly MethodRecipe[]): string {
  const out: string[] = [
    '# Training recipes: ours against the papers',
    '',
    'Generated from the recipes in `src/compress/<method>.ts` (`node scripts/recipes-table.mjs`; `test/recipes.test.ts` checks each recipe against its paper\'s table and this file against the recipes). `softpress train` uses them for every flag not given; each trained compressor\'s card (`compressor.json` "recipe", `README.md`) records the settings it actually used and where they differ from the paper.',
    '',
    "Source: **paper** — the paper as summarised in `papers/<method>.md`; **code** — the method's official code (issue #28); **not stated** — neither says, softpress's own choice.",
    '',
    '| method | setting | ours (default) | paper | source |',
    '|---|---|---|---|---|',
  ];
  for (const r of recipes) {
    const row = (key: string, v: RecipeValue<unknown>) =>
      out.push(
        `| ${r.method} | ${key} | ${fmt(v.value)} | ${v.source === 'not stated' ? 'not stated' : fmt(v.value)} | ${v.source}${v.note ? ` (${v.note})` : ''} |`,
      );
    for (const [k, v] of Object.entries(r.options)) row(`options.${k}`, v);
    for (const [s, rec] of Object.entries(r.stages)) for (const [k, v] of Object.entries(rec)) row(`${s}.${k}`, v as RecipeValue<unknown>);
    for (const [k, v] of Object.entries(r.train)) row(`train.${k}`, v);
  }
  out.push('', '## Deviations from the papers', '', '| method | setting | paper | ours | why |', '|---|---|---|---|---|');
  for (const r of recipes) for (const d of r.deviations) out.push(`| ${r.method} | ${d.key} | ${d.paper} | ${d.ours} | ${d.why} |`);
  out.push('', 'Sources: ' + recipes.map((r) => `${r.method}: ${r.source}`).join('; ') + '.');
  return out.join('\n') + '\n';
}
