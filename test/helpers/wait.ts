/** Polls until a condition holds: for tests that wait on a server, an engine or a page, not on a fixed sleep. */
export async function waitFor(
  done: () => boolean | Promise<boolean>,
  what: string | (() => string),
  opts: { timeoutMs?: number; everyMs?: number } = {},
): Promise<void> {
  const end = performance.now() + (opts.timeoutMs ?? 10_000);
  while (!(await done())) {
    if (performance.now() > end) throw new Error(`timed out waiting for ${typeof what === 'string' ? what : what()}`);
    await new Promise((r) => setTimeout(r, opts.everyMs ?? 1));
  }
}
