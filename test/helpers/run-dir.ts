/** A fresh temporary folder for a training test, removed after it; skips when the tokenizer is missing. */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { TestContext } from 'node:test';

export async function withRunDir(t: TestContext, body: (dir: string) => Promise<void>): Promise<void> {
  if (!existsSync('models/softpress-base/tokenizer.json')) {
    t.skip('models/softpress-base/tokenizer.json is missing');
    return;
  }
  const dir = mkdtempSync(join(tmpdir(), 'softpress-run-'));
  try {
    await body(dir);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
