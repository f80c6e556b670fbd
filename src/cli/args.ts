/** Small helpers for the subcommands' options: numbers, lists, key=value method options. */

/** A number option (undefined when absent), with a clear error naming the flag. */
export function numberOpt(flag: string, v: string | undefined, check: { integer?: boolean; min?: number; max?: number; gt?: number } = {}): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  const want = `${check.integer ? 'an integer' : 'a number'}${check.min !== undefined ? ` >= ${check.min}` : ''}${check.gt !== undefined ? ` > ${check.gt}` : ''}${check.max !== undefined ? ` <= ${check.max}` : ''}`;
  const bad =
    v.trim() === '' ||
    !Number.isFinite(n) ||
    (check.integer && !Number.isInteger(n)) ||
    (check.min !== undefined && n < check.min) ||
    (check.gt !== undefined && !(n > check.gt)) ||
    (check.max !== undefined && n > check.max);
  if (bad) throw new Error(`--${flag} must be ${want}, got '${v}'`);
  return n;
}

/** "4" or "4,8,16" -> [4, 8, 16] (each >= 1). */
export function ratioList(v: string): number[] {
  const parts = v.split(',').map((s) => s.trim());
  if (parts.some((p) => p === '')) throw new Error(`--ratio must be a number >= 1 or a comma-separated list, got '${v}'`);
  return parts.map((p) => numberOpt('ratio', p, { min: 1 })!);
}

/**
 * `--method-option key=value` (repeatable) -> options. Values are read as JSON when they parse
 * (numbers, true/false, lists in brackets), else kept as strings.
 */
export function methodOptions(list: string[] | undefined): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const item of list ?? []) {
    const eq = item.indexOf('=');
    if (eq <= 0) throw new Error(`--method-option must be key=value, got '${item}'`);
    const key = item.slice(0, eq).trim();
    const raw = item.slice(eq + 1);
    if (key in out) throw new Error(`--method-option ${key} is given twice`);
    let value: unknown = raw;
    try {
      value = JSON.parse(raw);
    } catch {
      // a plain string
    }
    out[key] = value;
  }
  return out;
}

/** The budget flags of compress / ask: exactly one of --ratio R / --budget K, or a default. */
export function budgetOpt(
  ratio: string | undefined,
  budget: string | undefined,
  fallback?: { ratio?: number; tokens?: number },
): { ratio?: number; tokens?: number } {
  if (ratio !== undefined && budget !== undefined) throw new Error('give --ratio R or --budget K, not both');
  if (ratio !== undefined) return { ratio: numberOpt('ratio', ratio, { min: 1 }) };
  if (budget !== undefined) return { tokens: numberOpt('budget', budget, { integer: true, min: 0 }) };
  if (fallback) return fallback;
  throw new Error('give --ratio R (context tokens per soft token) or --budget K (soft tokens)');
}
