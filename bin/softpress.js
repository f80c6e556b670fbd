#!/usr/bin/env node
// The softpress command. Runs the compiled CLI (npm run build, or scripts/setup.sh, makes it).
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const main = fileURLToPath(new URL('../dist/src/cli/main.js', import.meta.url));
if (!existsSync(main)) {
  console.error('softpress is not built yet: run `npm run setup` (or `bash scripts/setup.sh`) first.');
  process.exit(1);
}
const { main: run } = await import(main);
await run(process.argv.slice(2));
