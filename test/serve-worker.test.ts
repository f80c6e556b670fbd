/**
 * Compressions in the compression worker's thread (src/serve/compress-worker.ts): a server with
 * the worker stores the same soft contexts as one compressing on its event loop (every method,
 * learned ones from their folders), answers the same from them, and reports the worker's work in
 * /health; the worker refuses a base model other than the server's, an unknown method, and work
 * after it was closed.
 */
import test, { after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { compressorNames, createCompressor, freeSoftContext, parseSoftContext, saveCompressor } from '../src/compress/index.js';
import { loadModel } from '../src/models/load.js';
import { openService, type SoftpressService } from '../src/serve/service.js';
import { buildServer } from '../src/serve/server.js';
import { CompressWorker } from '../src/serve/compress-worker.js';
import { ShutdownError } from '../src/serve/engine.js';
import { writeRandomBase } from '../src/serve/testing.js';
import { maxDiff } from './helpers/close.js';

const tmp = mkdtempSync(join(tmpdir(), 'softpress-serve-worker-'));
const baseDir = writeRandomBase(join(tmp, 'base'), { window: 256, sharp: true, seed: 7 });
after(() => rmSync(tmp, { recursive: true, force: true }));

const DOC =
  'The lighthouse keeper wrote in the log every evening. On the ninth of March the secret code of the blue box was 4817, ' +
  'and the keeper hid the box under the third stair. Ships passed in the fog, and the bell rang twice an hour. ';

describe('serve: the compression worker', () => {
  test('stores the same soft contexts as compressing on the event loop, for every method', async () => {
    const learned = compressorNames({ learnedOnly: true });
    const probe = loadModel(baseDir).model;
    const dirs = learned.map((m) => {
      const dir = join(tmp, 'compressors', m);
      saveCompressor(createCompressor(m, probe, {}), dir);
      return dir;
    });
    probe.free();
    const open = (name: string, compressWorker: boolean): SoftpressService =>
      openService({
        base: baseDir,
        compressorDirs: dirs,
        discover: false,
        compressWorker,
        storePath: join(tmp, name, 'contexts.mdb'),
        storeMaxBytes: 64 * 2 ** 20,
      });
    const off = open('on-loop', false);
    const on = open('in-worker', true);
    const apps = [buildServer(off), buildServer(on)];
    try {
      assert.equal(off.compressWorker, false);
      assert.equal(on.compressWorker, true);
      const methods = on.methods().map((m) => m.name);
      for (const m of [...learned, 'full', 'truncate', 'none']) assert.ok(methods.includes(m), m);
      for (const method of methods) {
        const made = await Promise.all(apps.map((app) => app.inject({ method: 'POST', url: '/v1/contexts', payload: { text: DOC, method, ratio: 4 } })));
        const [a, b] = made.map((r) => JSON.parse(r.body) as { id: string; softTokens: number; sourceTokens: number });
        assert.equal(made[0].statusCode, 201, made[0].body);
        assert.equal(made[1].statusCode, 201, made[1].body);
        assert.equal(b.softTokens, a.softTokens, method);
        assert.equal(b.sourceTokens, a.sourceTokens, method);
        const ca = parseSoftContext(off.store.getBytes(a.id)!, off.model);
        const cb = parseSoftContext(on.store.getBytes(b.id)!, on.model);
        try {
          assert.equal(!!cb.softTokens, !!ca.softTokens, method);
          if (ca.softTokens && cb.softTokens)
            assert.ok(maxDiff(ca.softTokens, cb.softTokens) < 1e-5, `${method}: soft tokens differ by ${maxDiff(ca.softTokens, cb.softTokens)}`);
          assert.equal(cb.memoryKv?.length ?? 0, ca.memoryKv?.length ?? 0, method);
          for (const [l, kv] of (ca.memoryKv ?? []).entries())
            assert.ok(maxDiff(kv.k, cb.memoryKv![l].k) + maxDiff(kv.v, cb.memoryKv![l].v) < 1e-5, `${method}: memory of layer ${l}`);
        } finally {
          freeSoftContext(ca);
          freeSoftContext(cb);
        }
        const asks = await Promise.all(
          [a, b].map((c, i) =>
            apps[i].inject({ method: 'POST', url: `/v1/contexts/${c.id}/ask`, payload: { questions: ['What is the code?'], maxTokens: 6 } }),
          ),
        );
        assert.equal(asks[1].statusCode, 200, asks[1].body);
        assert.equal(JSON.parse(asks[1].body).answers[0].answer, JSON.parse(asks[0].body).answers[0].answer, `${method}: the same answer`);
      }
      const health = [await apps[0].inject({ url: '/health' }), await apps[1].inject({ url: '/health' })].map(
        (r) => JSON.parse(r.body) as { compressWorker: unknown; engine: { jobs: number } },
      );
      assert.equal(health[0].compressWorker, null);
      assert.deepEqual(health[1].compressWorker, { pending: 0, done: methods.length, failed: null });
      assert.equal(health[1].engine.jobs, health[0].engine.jobs - methods.length, 'the worker, not the engine, ran the compressions');
    } finally {
      for (const app of apps) await app.close();
      await off.close();
      await on.close();
    }
  });

  test('refuses another base model, an unknown method, and work after closing', async () => {
    const wrong = new CompressWorker({ base: baseDir, compressorDirs: [], fingerprint: 'not-this-model' });
    await assert.rejects(wrong.compress('truncate', [5, 6, 7], { ratio: 2 }), /could not start: it loaded base model \w+, the server runs not-this-model/);
    await wrong.close();

    const model = loadModel(baseDir).model;
    const fingerprint = model.fingerprint();
    model.free();
    const w = new CompressWorker({ base: baseDir, compressorDirs: [], fingerprint });
    await assert.rejects(w.compress('no-such-method', [5, 6, 7], { ratio: 2 }), /no method 'no-such-method'/);
    const ok = await w.compress('truncate', [5, 6, 7, 8], { ratio: 2 });
    const ctx = parseSoftContext(ok.bytes);
    assert.deepEqual(ctx.meta.softTokens, [2]);
    freeSoftContext(ctx);
    assert.deepEqual(w.stats(), { pending: 0, done: 2, failed: null });
    await w.close();
    await assert.rejects(w.compress('truncate', [5, 6, 7], { ratio: 2 }), ShutdownError);
  });
});
