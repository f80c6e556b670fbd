/**
 * Checkpoints of the training loop: their files carry content checksums verified on resume,
 * temporary folders left by killed processes are cleaned (a cut swap is repaired), and a resume
 * of a finished run says so with the last logged loss.
 */
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { randn, tensor, manualSeed } from '../src/tensor/index.js';
import { Parameter, constant } from '../src/nn/index.js';
import { ChecksumError, readSafetensors, CHECKSUM_KEY } from '../src/io/safetensors.js';
import { cleanStaleCheckpoints, train, type TrainTask } from '../src/train/trainer.js';

/** A one-parameter least-squares task: deterministic in (step, micro), fast. */
function task(): TrainTask & { w: Parameter } {
  manualSeed(3);
  const w = new Parameter(randn([4]));
  return {
    w,
    params: [['w', w]],
    microBatch(step, micro) {
      const x = tensor([1, step % 3, micro + 1, 2], [4]);
      const loss = w.value.mul(x).sub(1).square().mean();
      return { loss, tokens: 4 };
    },
  };
}

const opts = (outDir: string, extra: object = {}) => ({ outDir, totalSteps: 6, schedule: constant({ lr: 0.05 }), checkpointEvery: 2, quiet: true, ...extra });

/** The id of a process that has exited. */
function deadPid(): number {
  const r = spawnSync(process.execPath, ['-e', 'process.stdout.write(String(process.pid))']);
  return Number(r.stdout.toString());
}

function withDir(body: (dir: string) => Promise<void>): () => Promise<void> {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'softpress-ckpt-'));
    try {
      await body(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'checkpoint files carry checksums; a damaged one is refused on resume',
  withDir(async (dir) => {
    const out = join(dir, 'run');
    await train(task(), opts(out, { stopAfter: 3 }));
    for (const f of ['params.safetensors', 'optimizer.safetensors']) {
      const { metadata } = readSafetensors(join(out, 'checkpoint', f));
      assert.match(metadata[CHECKSUM_KEY], /^[0-9a-f]{64}$/, f);
    }
    const damaged = join(dir, 'damaged');
    cpSync(out, damaged, { recursive: true });
    const file = join(damaged, 'checkpoint', 'params.safetensors');
    const bytes = readFileSync(file);
    bytes[bytes.length - 1] ^= 0x01; // the last byte of the data buffer
    writeFileSync(file, bytes);
    await assert.rejects(
      train(task(), opts(damaged, { resume: true })),
      (e: unknown) => e instanceof ChecksumError && /params\.safetensors: content checksum mismatch/.test(e.message),
    );
  }),
);

test(
  'a resume removes the temporary folders of dead processes, keeps live ones, and repairs a cut swap',
  withDir(async (dir) => {
    const straight = join(dir, 'straight');
    const s = await train(task(), opts(straight));
    const out = join(dir, 'run');
    await train(task(), opts(out, { stopAfter: 3 }));
    const dead = deadPid();
    // A kill during a save: the new checkpoint half-written, the swap cut after its first rename.
    mkdirSync(join(out, `checkpoint.tmp-${dead}`));
    writeFileSync(join(out, `checkpoint.tmp-${dead}`, 'params.safetensors.tmp-1'), 'partial');
    renameSync(join(out, 'checkpoint'), join(out, `checkpoint.old-${dead}`));
    const live = `checkpoint.tmp-${process.ppid}`; // a process that is running: another writer
    mkdirSync(join(out, live));
    const r = await train(task(), opts(out, { resume: true }));
    assert.equal(r.steps, 6);
    assert.ok(!existsSync(join(out, `checkpoint.tmp-${dead}`)) && !existsSync(join(out, `checkpoint.old-${dead}`)));
    assert.ok(existsSync(join(out, live)), 'a live process keeps its folder');
    assert.deepEqual(
      [...readSafetensors(join(out, 'checkpoint', 'params.safetensors')).tensors.get('w')!.data],
      [...readSafetensors(join(straight, 'checkpoint', 'params.safetensors')).tensors.get('w')!.data],
    );
    assert.equal(r.lastLoss, s.lastLoss);
    rmSync(join(out, live), { recursive: true });
    assert.deepEqual(cleanStaleCheckpoints(out), { removed: [], restored: undefined });
  }),
);

test(
  'a resume of a finished run trains nothing and reports the last logged loss',
  withDir(async (dir) => {
    const out = join(dir, 'run');
    const done = await train(task(), opts(out));
    assert.equal(done.alreadyFinished, false);
    const again = await train(task(), opts(out, { resume: true }));
    assert.equal(again.alreadyFinished, true);
    assert.equal(again.steps, 6);
    assert.ok(Number.isFinite(again.lastLoss));
    assert.equal(again.lastLoss, done.lastLoss);
  }),
);
