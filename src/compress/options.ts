/**
 * Reading a compressor's options (from code, from compressor.json, or from the CLI's
 * `--method-option key=value`, whose values arrive as JSON-parsed numbers/booleans or strings),
 * with clear errors. Keys a method does not know are ignored here (compressor.json also holds
 * the base fingerprint and training notes); the CLI rejects unknown keys itself by comparing
 * with the created compressor's config.
 */

function fail(method: string, key: string, want: string, got: unknown): never {
  throw new Error(`${method}: option '${key}' must be ${want}, got ${JSON.stringify(got)}`);
}

export function optNumber(
  method: string,
  o: Record<string, unknown>,
  key: string,
  def: number,
  check: { min?: number; max?: number; integer?: boolean } = {},
): number {
  let v = o[key] ?? def;
  if (typeof v === 'string' && v.trim() !== '' && Number.isFinite(Number(v))) v = Number(v);
  const want = `${check.integer ? 'an integer' : 'a number'}${check.min !== undefined ? ` >= ${check.min}` : ''}${check.max !== undefined ? ` <= ${check.max}` : ''}`;
  if (typeof v !== 'number' || !Number.isFinite(v)) fail(method, key, want, o[key]);
  if (check.integer && !Number.isInteger(v)) fail(method, key, want, o[key]);
  if (check.min !== undefined && v < check.min) fail(method, key, want, o[key]);
  if (check.max !== undefined && v > check.max) fail(method, key, want, o[key]);
  return v;
}

export function optBool(method: string, o: Record<string, unknown>, key: string, def: boolean): boolean {
  const v = o[key] ?? def;
  if (v === 'true') return true;
  if (v === 'false') return false;
  if (typeof v !== 'boolean') fail(method, key, 'true or false', o[key]);
  return v;
}

export function optEnum<T extends string>(method: string, o: Record<string, unknown>, key: string, allowed: readonly T[], def: T): T {
  const v = o[key] ?? def;
  if (typeof v !== 'string' || !(allowed as readonly string[]).includes(v)) fail(method, key, `one of ${allowed.join(', ')}`, o[key]);
  return v as T;
}

/** A list of allowed names, given as an array or a comma-separated string. */
export function optList<T extends string>(method: string, o: Record<string, unknown>, key: string, allowed: readonly T[], def: readonly T[]): T[] {
  const raw = o[key] ?? def;
  const list =
    typeof raw === 'string'
      ? raw
          .split(',')
          .map((s) => s.trim())
          .filter((s) => s !== '')
      : raw;
  if (!Array.isArray(list) || list.length === 0 || list.some((x) => typeof x !== 'string' || !(allowed as readonly string[]).includes(x))) {
    fail(method, key, `a non-empty list of ${allowed.join(', ')}`, o[key]);
  }
  if (new Set(list).size !== list.length) fail(method, key, 'a list without repeats', o[key]);
  return list as T[];
}
