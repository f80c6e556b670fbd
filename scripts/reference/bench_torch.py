"""The PyTorch anchor of ../shared/bench-spec.md: the same figures as `softpress bench engine` and
`softpress bench model --config S|M|smol`, from a plain PyTorch Llama of the same shape.

    OMP_WAIT_POLICY=PASSIVE \
    GLIBC_TUNABLES=glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=4294967295 \
    python3 scripts/reference/bench_torch.py engine|S|M|smol [--threads 2] [--reps 5]

The two environment variables are the "tuned" set-up the spec takes as the anchor; scripts/bench-vs-torch.sh
sets them and runs both sides in one run. Prints one JSON line (the last line of stdout) with the
same keys as softpress's benchmarks. Needs torch (Debian's python3-torch, or a PyPI wheel).
"""
import argparse
import json
import math
import statistics
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "S": dict(dim=256, layers=4, heads=8, kv_heads=4, ffn=688, vocab=8192, seq=256, batch=8),
    "M": dict(dim=512, layers=8, heads=8, kv_heads=4, ffn=1376, vocab=8192, seq=512, batch=4),
    "smol": dict(dim=576, layers=30, heads=9, kv_heads=3, ffn=1536, vocab=49152, seq=512, batch=2),
}
WARMUPS = 3


def time_median(reps, fn):
    for _ in range(WARMUPS):
        fn()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_tables(seq, head_dim, theta=10000.0):
    inv = 1.0 / theta ** (torch.arange(0, head_dim, 2).float() / head_dim)
    freqs = torch.outer(torch.arange(seq).float(), inv)
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
    return x * cos + rotated * sin


class Block(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.heads, self.kv_heads = c["heads"], c["kv_heads"]
        self.head_dim = c["dim"] // c["heads"]
        d, hd = c["dim"], self.head_dim
        self.attn_norm, self.ffn_norm = RMSNorm(d), RMSNorm(d)
        self.q = nn.Linear(d, self.heads * hd, bias=False)
        self.k = nn.Linear(d, self.kv_heads * hd, bias=False)
        self.v = nn.Linear(d, self.kv_heads * hd, bias=False)
        self.o = nn.Linear(self.heads * hd, d, bias=False)
        self.gate = nn.Linear(d, c["ffn"], bias=False)
        self.up = nn.Linear(d, c["ffn"], bias=False)
        self.down = nn.Linear(c["ffn"], d, bias=False)

    def forward(self, x, cos, sin, cache=None):
        b, t, _ = x.shape
        h = self.attn_norm(x)
        q = self.q(h).view(b, t, self.heads, self.head_dim).transpose(1, 2)
        k = self.k(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        v = self.v(h).view(b, t, self.kv_heads, self.head_dim).transpose(1, 2)
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        if cache is not None:
            if "k" in cache:
                k = torch.cat([cache["k"], k], dim=2)
                v = torch.cat([cache["v"], v], dim=2)
            cache["k"], cache["v"] = k, v
        rep = self.heads // self.kv_heads
        k = k.repeat_interleave(rep, dim=1)
        v = v.repeat_interleave(rep, dim=1)
        # PyTorch 1.13 has no fused attention on CPU: the plain masked softmax.
        s = k.shape[2]
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.head_dim)
        if t > 1:
            mask = torch.ones(t, s, dtype=torch.bool).triu(s - t + 1)
            scores = scores.masked_fill(mask, float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.o(a)
        h = self.ffn_norm(x)
        return x + self.down(F.silu(self.gate(h)) * self.up(h))


class Llama(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed = nn.Embedding(c["vocab"], c["dim"])
        self.blocks = nn.ModuleList(Block(c) for _ in range(c["layers"]))
        self.norm = RMSNorm(c["dim"])
        self.head = nn.Linear(c["dim"], c["vocab"], bias=False)
        cos, sin = rope_tables(max(c["seq"], 512), c["dim"] // c["heads"])
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, ids=None, embeds=None, caches=None, start=0):
        x = self.embed(ids) if embeds is None else embeds
        t = x.shape[1]
        cos, sin = self.cos[start : start + t], self.sin[start : start + t]
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, None if caches is None else caches[i])
        return self.head(self.norm(x))


def bench_engine(reps):
    n = 1024
    a, b = torch.randn(n, n), torch.randn(n, n)
    sec = time_median(reps, lambda: a @ b)
    x, y = torch.randn(8), torch.randn(8)
    op = time_median(max(reps, 20) * 100, lambda: x + y)
    return {"bench": "engine", "matmul_gflops": round(2 * n**3 / sec / 1e9, 2), "op_overhead_us": round(op * 1e6, 3)}


def bench_model(name, reps):
    c = CONFIGS[name]
    torch.manual_seed(0)
    model = Llama(c)
    ids = torch.randint(0, c["vocab"], (c["batch"], c["seq"] + 1))
    inputs, targets = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
    tokens = c["batch"] * c["seq"]

    def loss_of(logits):
        return F.cross_entropy(logits.reshape(tokens, c["vocab"]), targets.reshape(tokens))

    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)

    def train_step():
        loss_of(model(inputs)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    train = time_median(reps, train_step)
    log(f"train   {tokens / train:.0f} tok/s ({train * 1000:.0f} ms/step)")
    with torch.no_grad():
        prefill = time_median(reps, lambda: model(inputs))
    log(f"prefill {tokens / prefill:.0f} tok/s")
    for p in model.parameters():
        p.requires_grad_(False)
    with torch.no_grad():
        embeds = model.embed(inputs)

    def frozen_step():
        x = embeds.detach().requires_grad_(True)
        loss_of(model(embeds=x)).backward()
        assert x.grad is not None

    frozen = time_median(reps, frozen_step)
    log(f"frozen  {tokens / frozen:.0f} tok/s (grad to input embeddings)")

    prompt = torch.randint(0, c["vocab"], (1, 256))
    new_tokens = 128

    def decode():
        caches = [dict() for _ in model.blocks]
        with torch.no_grad():
            nxt = model(prompt, caches=caches)[:, -1].argmax(-1, keepdim=True)
            t = time.perf_counter()
            for i in range(new_tokens):
                nxt = model(nxt, caches=caches, start=256 + i)[:, -1].argmax(-1, keepdim=True)
            return time.perf_counter() - t

    times = [decode() for _ in range(max(3, math.ceil(reps / 2)) + WARMUPS)][WARMUPS:]
    dec = statistics.median(times)
    log(f"decode  {new_tokens / dec:.1f} tok/s (batch 1, 256-token prompt, 128 new tokens, KV cache)")
    return {
        "bench": "model",
        "config": name,
        "train_tok_s": round(tokens / train),
        "prefill_tok_s": round(tokens / prefill),
        "frozen_tok_s": round(tokens / frozen),
        "decode_tok_s": round(new_tokens / dec, 1),
    }


def log(s):
    print(s, file=sys.stderr, flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["engine", *CONFIGS])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    log(f"torch {torch.__version__} ({torch.__file__}), {args.threads} threads")
    r = bench_engine(args.reps) if args.what == "engine" else bench_model(args.what, args.reps)
    r.update(threads=args.threads, torch=torch.__version__)
    print(json.dumps(r))


if __name__ == "__main__":
    main()
