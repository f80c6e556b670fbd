"""An fp32 reference forward of a GGUF Llama model (SmolLM2-135M-Instruct), independent of
llama.cpp and of softpress's TypeScript code.

Weights: read with the `gguf` package (pip `gguf`) and dequantized with gguf.quants.dequantize
(Q4_1 / Q8_0 -> float32), then held in float64; the forward runs in float64 with numpy (the
logits are stored as float32). Nothing else is rounded: no activation quantization, no f16 KV
cache (llama.cpp does both).

RoPE: llama.cpp's HF converter permuted the rows of attn_q / attn_k (per head, the two halves
of the head dimension are interleaved) so that its "normal" RoPE, which rotates adjacent pairs
(2i, 2i+1), equals HF's rotate-half on the original rows. This forward undoes that permutation
and applies HF-style rotate-half RoPE (pairs (i, i + d/2)) - the layout an HF-style
implementation uses. `rope_mode="gguf"` instead keeps the GGUF rows and rotates adjacent pairs;
the two must agree to rounding (a self-check of the permutation, see check()).

    python3 smollm2_fp32_ref.py MODEL.gguf ID...   # prints the argmax at every position
"""

import sys

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize


def _field(reader, key):
    return reader.fields[key].contents()


def unpermute(w, n_head):
    """Inverse of convert_hf_to_gguf.py's LlamaModel.permute for rows of shape (n_head*d, in)."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, d // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def permute(w, n_head):
    """convert_hf_to_gguf.py's LlamaModel.permute (HF rows -> GGUF rows)."""
    rows = w.shape[0]
    d = rows // n_head
    return w.reshape(n_head, 2, d // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


class Model:
    def __init__(self, path, rope_mode="hf", dtype=np.float64):
        assert rope_mode in ("hf", "gguf")
        self.rope_mode = rope_mode
        self.dtype = dtype
        r = GGUFReader(path)
        arch = _field(r, "general.architecture")
        assert arch == "llama", arch
        self.n_layer = int(_field(r, "llama.block_count"))
        self.d_model = int(_field(r, "llama.embedding_length"))
        self.n_head = int(_field(r, "llama.attention.head_count"))
        self.n_kv = int(_field(r, "llama.attention.head_count_kv"))
        self.d_ff = int(_field(r, "llama.feed_forward_length"))
        self.eps = float(_field(r, "llama.attention.layer_norm_rms_epsilon"))
        self.theta = float(_field(r, "llama.rope.freq_base"))
        self.d_head = self.d_model // self.n_head
        rope_dim = int(_field(r, "llama.rope.dimension_count"))
        assert rope_dim == self.d_head, (rope_dim, self.d_head)
        self.types = {}
        w = {}
        for t in r.tensors:
            a = dequantize(t.data, t.tensor_type)
            # GGUF lists dims fastest-first; numpy arrays are (rows=out, cols=in)
            a = np.asarray(a, dtype=np.float32).reshape([int(x) for x in reversed(t.shape)] if len(t.shape) > 1 else -1)
            w[t.name] = a.astype(dtype)
            self.types[t.name] = t.tensor_type.name
        self.emb = w["token_embd.weight"]  # (vocab, d_model)
        self.out = w.get("output.weight", self.emb)  # tied when absent
        self.tied = "output.weight" not in w
        self.out_norm = w["output_norm.weight"]
        self.layers = []
        for i in range(self.n_layer):
            p = f"blk.{i}."
            wq, wk = w[p + "attn_q.weight"], w[p + "attn_k.weight"]
            if rope_mode == "hf":
                wq, wk = unpermute(wq, self.n_head), unpermute(wk, self.n_kv)
            self.layers.append(dict(
                attn_norm=w[p + "attn_norm.weight"], wq=wq, wk=wk, wv=w[p + "attn_v.weight"],
                wo=w[p + "attn_output.weight"], ffn_norm=w[p + "ffn_norm.weight"],
                wg=w[p + "ffn_gate.weight"], wu=w[p + "ffn_up.weight"], wd=w[p + "ffn_down.weight"]))
        self.vocab = self.emb.shape[0]
        half = self.d_head // 2
        self.inv_freq = self.theta ** (-np.arange(half, dtype=np.float64) * 2.0 / self.d_head)

    def rms(self, x, g):
        return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + self.eps) * g

    def rope(self, x, pos):
        """x: (T, H, d); pos: (T,)"""
        ang = pos[:, None].astype(np.float64) * self.inv_freq[None, :]  # (T, d/2)
        cos, sin = np.cos(ang)[:, None, :], np.sin(ang)[:, None, :]
        if self.rope_mode == "hf":  # rotate half: pairs (i, i + d/2)
            half = self.d_head // 2
            a, b = x[..., :half], x[..., half:]
            return np.concatenate([a * cos - b * sin, b * cos + a * sin], axis=-1)
        a, b = x[..., 0::2], x[..., 1::2]  # llama.cpp NORM mode: adjacent pairs
        y = np.empty_like(x)
        y[..., 0::2] = a * cos - b * sin
        y[..., 1::2] = b * cos + a * sin
        return y

    def new_cache(self):
        return [dict(k=np.zeros((0, self.n_kv, self.d_head), self.dtype),
                     v=np.zeros((0, self.n_kv, self.d_head), self.dtype)) for _ in range(self.n_layer)]

    def forward(self, ids, cache=None, all_logits=True):
        """Logits (T, vocab) for new tokens `ids` after the tokens already in `cache`."""
        if cache is None:
            cache = self.new_cache()
        ids = np.asarray(ids, dtype=np.int64)
        T = len(ids)
        p0 = cache[0]["k"].shape[0]
        pos = np.arange(p0, p0 + T)
        x = self.emb[ids]
        group = self.n_head // self.n_kv
        scale = 1.0 / np.sqrt(self.d_head)
        S = p0 + T
        mask = np.where(np.arange(S)[None, :] <= pos[:, None], 0.0, -np.inf)  # (T, S)
        for L, c in zip(self.layers, cache):
            h = self.rms(x, L["attn_norm"])
            q = (h @ L["wq"].T).reshape(T, self.n_head, self.d_head)
            k = (h @ L["wk"].T).reshape(T, self.n_kv, self.d_head)
            v = (h @ L["wv"].T).reshape(T, self.n_kv, self.d_head)
            q, k = self.rope(q, pos), self.rope(k, pos)
            c["k"] = np.concatenate([c["k"], k]); c["v"] = np.concatenate([c["v"], v])
            K = np.repeat(c["k"], group, axis=1)  # query head j uses kv head j // group
            V = np.repeat(c["v"], group, axis=1)
            s = np.einsum("thd,shd->hts", q, K) * scale + mask[None]
            s = s - s.max(axis=-1, keepdims=True)
            pr = np.exp(s)
            pr /= pr.sum(axis=-1, keepdims=True)
            o = np.einsum("hts,shd->thd", pr, V).reshape(T, self.d_model)
            x = x + o @ L["wo"].T
            h = self.rms(x, L["ffn_norm"])
            g = h @ L["wg"].T
            x = x + ((g / (1.0 + np.exp(-g))) * (h @ L["wu"].T)) @ L["wd"].T
        if not all_logits:
            x = x[-1:]
        return self.rms(x, self.out_norm) @ self.out.T

    def greedy(self, prompt, n_new, eog=()):
        cache = self.new_cache()
        logits = self.forward(prompt, cache, all_logits=False)[-1]
        out, gaps = [], []
        for _ in range(n_new):
            t = int(np.argmax(logits))
            top2 = np.partition(logits, -2)[-2:]
            gaps.append(float(top2[1] - top2[0]))
            out.append(t)
            if t in eog:
                break
            logits = self.forward([t], cache, all_logits=False)[-1]
        return out, gaps


def check(path, ids):
    """Self-checks: the HF-layout rotate-half forward equals the GGUF-layout adjacent-pair one;
    permute/unpermute are inverse; incremental (cached) decoding equals the full forward."""
    hf, gg = Model(path, "hf"), Model(path, "gguf")
    a, b = hf.forward(ids), gg.forward(ids)
    w = np.random.default_rng(0).standard_normal((576, 7))
    assert np.array_equal(permute(unpermute(w, 9), 9), w)
    cache = hf.new_cache()
    inc = np.concatenate([hf.forward(ids[:3], cache)] + [hf.forward([t], cache) for t in ids[3:]])
    return float(np.abs(a - b).max()), float(np.abs(a - inc).max())


if __name__ == "__main__":
    m = Model(sys.argv[1])
    ids = [int(x) for x in sys.argv[2:]]
    print(m.forward(ids).argmax(-1).tolist())
