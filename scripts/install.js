#!/usr/bin/env node
// The package's install step: builds the native addon (native/build/Release/softpress_native.node)
// with node-gyp against the system libtorch (Debian's libtorch-dev) or LIBTORCH=/path/to/libtorch.
// A no-op when the addon is there. SOFTPRESS_ADDON=/path/to/softpress_native.node copies an addon
// built elsewhere for the same libtorch and Node ABI instead of compiling (the package test uses it).
import { copyFileSync, existsSync, mkdirSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { spawnSync } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const addon = join(root, 'native', 'build', 'Release', 'softpress_native.node');
const say = (msg) => process.stderr.write(`softpress install: ${msg}\n`);

if (existsSync(addon)) process.exit(0);

const prebuilt = process.env.SOFTPRESS_ADDON;
if (prebuilt) {
  if (!existsSync(prebuilt)) {
    say(`SOFTPRESS_ADDON=${prebuilt} does not exist`);
    process.exit(1);
  }
  mkdirSync(dirname(addon), { recursive: true });
  copyFileSync(prebuilt, addon);
  say(`using the addon at ${prebuilt}`);
  process.exit(0);
}

const libtorch = process.env.LIBTORCH;
const header = libtorch ? join(libtorch, 'include', 'ATen', 'ATen.h') : '/usr/include/ATen/ATen.h';
if (!existsSync(header)) {
  say(
    libtorch
      ? `LIBTORCH=${libtorch} has no include/ATen/ATen.h; point it at an unpacked libtorch.`
      : 'libtorch is missing (no /usr/include/ATen/ATen.h). Install the apt package libtorch-dev ' +
          '(sudo apt-get install libtorch-dev libopenblas0 g++ make python3), or set LIBTORCH=/path/to/libtorch, then reinstall softpress.',
  );
  process.exit(1);
}
// Gloo's headers, for the data-parallel process group (native/src/c10d.cc).
const glooHeaders = [...(libtorch ? [join(libtorch, 'include', 'gloo', 'algorithm.h')] : []), '/usr/include/gloo/algorithm.h'];
if (!glooHeaders.some((h) => existsSync(h))) {
  say(
    "Gloo's headers are missing (no " +
      glooHeaders.join(' or ') +
      '), which the data-parallel training needs. ' +
      'Install the apt package libgloo-dev (sudo apt-get install libgloo-dev), then reinstall softpress.',
  );
  process.exit(1);
}

// npm hands its own node-gyp to install scripts (npm_config_node_gyp); a checkout has its own.
let gyp = process.env.npm_config_node_gyp;
if (!gyp || !existsSync(gyp)) {
  try {
    gyp = createRequire(import.meta.url).resolve('node-gyp/bin/node-gyp.js');
  } catch {
    say('node-gyp is not available: run the install through npm (npm install softpress), which brings its own.');
    process.exit(1);
  }
}
const jobs = String(Math.max(1, Math.min(4, availableParallelism())));
say(`building the native addon against ${libtorch ?? 'the system libtorch'} (a minute or two)`);
const t0 = Date.now();
const r = spawnSync(process.execPath, [gyp, 'rebuild', '--directory', join(root, 'native'), '-j', jobs, '--loglevel=warn'], { stdio: 'inherit' });
if (r.status !== 0) {
  say('the native build failed (see above). It needs g++, make, python3, libtorch-dev and libgloo-dev (or LIBTORCH).');
  process.exit(r.status ?? 1);
}
say(`built ${addon} in ${((Date.now() - t0) / 1000).toFixed(0)} s`);
