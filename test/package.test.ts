/**
 * softpress as an npm package, as a user gets it: `npm pack` makes the tarball, `npm install`
 * puts it into an empty project and builds the native addon there (its install script), and the
 * README's "Use it from TypeScript" example — imported by name, type-checked with tsc against the
 * emitted declarations — runs open → compress → save → load → ask → stream on the small base.
 * Takes a minute or two: most of it is the addon's compilation.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { spawnSync } from 'node:child_process';

const REPO = process.cwd();
const SMALL_BASE = path.resolve(REPO, 'models/softpress-base');
const root = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-package-'));
test.after(() => fs.rmSync(root, { recursive: true, force: true }));

function run(cmd: string, args: string[], cwd: string, env: NodeJS.ProcessEnv = {}): { code: number; out: string } {
  const r = spawnSync(cmd, args, { cwd, encoding: 'utf8', env: { ...process.env, ...env }, maxBuffer: 64 << 20 });
  return { code: r.status ?? -1, out: `${r.stdout ?? ''}${r.stderr ?? ''}${r.error ? String(r.error) : ''}` };
}

/** The README's TypeScript example (the first ```ts block of its "Use it from TypeScript" section). */
function readmeExample(): string {
  const readme = fs.readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const section = readme.split('\n## Use it from TypeScript\n')[1];
  assert.ok(section, 'README has a "Use it from TypeScript" section');
  const block = /```ts\n([\s\S]*?)```/.exec(section.split('\n## ')[0]);
  assert.ok(block, 'the section has a ```ts block');
  return block[1];
}

/** The installed version of a dev dependency of this repo (so npm finds it in its cache). */
function devVersion(name: string): string {
  return (JSON.parse(fs.readFileSync(path.join(REPO, 'node_modules', name, 'package.json'), 'utf8')) as { version: string }).version;
}

test('npm pack → npm install (builds the addon) → the README example, type-checked, runs', { timeout: 900_000 }, () => {
  // 1. The tarball: what a user needs, nothing of the repo's own.
  const pack = run('npm', ['pack', '--pack-destination', root, '--loglevel=error'], REPO);
  assert.equal(pack.code, 0, pack.out);
  const tarball = path.join(
    root,
    fs.readdirSync(root).find((f) => f.endsWith('.tgz'))!,
  );
  const listing = run('tar', ['tzf', tarball], root).out.split('\n').filter(Boolean);
  for (const f of [
    'package/dist/src/index.js',
    'package/dist/src/index.d.ts',
    'package/dist/src/compress/index.d.ts',
    'package/native/binding.gyp',
    'package/scripts/install.js',
    'package/src/serve/playground.html',
    'package/bin/softpress.js',
    'package/LICENSE',
  ]) {
    assert.ok(listing.includes(f), `the tarball holds ${f}`);
  }
  const stray = listing.filter((f) => /^package\/(test|models|runs|node_modules|native\/build|dist\/test)\/|\.map$/.test(f));
  assert.deepEqual(stray, [], 'no tests, models, build outputs or source maps in the tarball');

  // 2. An empty project that allows softpress's install script (npm >= 11 runs a dependency's
  //    only when allowed); npm builds the addon there.
  const proj = path.join(root, 'project');
  fs.mkdirSync(proj);
  fs.writeFileSync(
    path.join(proj, 'package.json'),
    JSON.stringify({ name: 'uses-softpress', private: true, type: 'module', allowScripts: { softpress: true } }, null, 2),
  );
  const install = run(
    'npm',
    [
      'install',
      tarball,
      `typescript@${devVersion('typescript')}`,
      `@types/node@${devVersion('@types/node')}`,
      '--prefer-offline',
      '--no-audit',
      '--no-fund',
      '--loglevel=error',
    ],
    proj,
  );
  assert.equal(install.code, 0, install.out);
  assert.ok(fs.existsSync(path.join(proj, 'node_modules/softpress/native/build/Release/softpress_native.node')), `the install built the addon\n${install.out}`);

  // 3. The README example, on the small base, imported by name and type-checked.
  const example = readmeExample();
  assert.match(example, /from 'softpress'/);
  assert.match(example, /'smollm2-135m-instruct'/);
  fs.writeFileSync(path.join(proj, 'example.ts'), example.replace(`'smollm2-135m-instruct'`, JSON.stringify(SMALL_BASE)));
  fs.writeFileSync(
    path.join(proj, 'tsconfig.json'),
    JSON.stringify(
      {
        compilerOptions: { target: 'ES2022', module: 'NodeNext', moduleResolution: 'NodeNext', strict: true, outDir: 'out', types: ['node'] },
        files: ['example.ts'],
      },
      null,
      2,
    ),
  );
  const tsc = run(process.execPath, ['node_modules/typescript/bin/tsc', '-p', '.'], proj);
  assert.equal(tsc.code, 0, `tsc:\n${tsc.out}`);
  const ran = run(process.execPath, ['out/example.js'], proj);
  assert.equal(ran.code, 0, ran.out);
  const m = /(\d+) tokens -> (\d+) soft tokens/.exec(ran.out);
  assert.ok(m, ran.out);
  assert.equal(Number(m[2]), Math.ceil(Number(m[1]) / 2), 'truncate at ratio 2 keeps half the tokens');
  assert.match(ran.out, /\n.* \| .*\n/, 'two answers');
  assert.ok(fs.statSync(path.join(proj, 'story.softctx')).size > 0, 'the stored context');
});

test('the install script names what is missing instead of failing in the compiler', () => {
  const pkg = path.join(root, 'bare');
  fs.mkdirSync(path.join(pkg, 'scripts'), { recursive: true });
  fs.copyFileSync(path.join(REPO, 'scripts/install.js'), path.join(pkg, 'scripts/install.js'));
  fs.writeFileSync(path.join(pkg, 'package.json'), JSON.stringify({ type: 'module' }));
  const r = run(process.execPath, ['scripts/install.js'], pkg, { LIBTORCH: path.join(root, 'no-libtorch') });
  assert.equal(r.code, 1);
  assert.match(r.out, /LIBTORCH=.*no-libtorch has no include\/ATen\/ATen\.h/);
});
