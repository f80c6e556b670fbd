// Runs every compiled test file (dist/test/*.test.js) with Node's test runner, one file at a
// time so that timing-sensitive tests do not compete for the two cores.
import { readdirSync } from 'node:fs';
import { spawnSync } from 'node:child_process';

const only = process.argv.slice(2);
const files = readdirSync('dist/test')
  .filter((f) => f.endsWith('.test.js'))
  .filter((f) => only.length === 0 || only.some((o) => f.includes(o)))
  .sort()
  .map((f) => `dist/test/${f}`);
if (files.length === 0) {
  console.error('no test files found in dist/test');
  process.exit(1);
}
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=1', ...files], { stdio: 'inherit' });
process.exit(r.status ?? 1);
