// softpress-llamacpp-ref: a small program against libllama that makes the llama.cpp reference
// outputs for test/fixtures/smollm2/ (built by scripts/reference/build-llamacpp.sh, driven by
// scripts/reference/make-smollm2-fixtures.py). Every command prints one JSON object on stdout;
// byte strings are hex-encoded (token pieces can split UTF-8 sequences).
//
//   softpress-llamacpp-ref info     MODEL
//   softpress-llamacpp-ref tokenize MODEL ADD_SPECIAL(0|1) PARSE_SPECIAL(0|1) HEXTEXT
//   softpress-llamacpp-ref detok    MODEL ID...
//   softpress-llamacpp-ref greedy   MODEL THREADS N_NEW N_CTX ID...
//   softpress-llamacpp-ref logits   MODEL THREADS OUT.f32 ID...
//
// greedy: the prompt goes in one llama_decode (n_batch = n_ubatch = n_ctx), then one token per
//   decode, picked by llama.cpp's greedy sampler (argmax; no temperature, no penalties); stops
//   after N_NEW tokens or at an end-of-generation token (which is kept). Prints the new ids, the
//   bytes of their pieces, and per step the gap between the best and second-best logit.
// logits: one llama_decode of the prompt with an output at every position; writes float32
//   little-endian [n_tokens][n_vocab] to OUT.f32.
// Context defaults otherwise (F16 KV cache; flash attention "auto", its resolution reported).
// Diagnostics only: SOFTPRESS_REF_KV_F32=1 makes the KV cache F32, SOFTPRESS_REF_FLASH_ATTN=0|1
// forces flash attention off/on.
#include "llama.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#ifndef SOFTPRESS_LLAMA_COMMIT
#define SOFTPRESS_LLAMA_COMMIT "unknown"
#endif

// llama.cpp's log: warnings and errors go to stderr; the context's line saying whether flash
// attention ("auto" by default) resolved to enabled or disabled is kept for the JSON output.
static std::string g_fa_log;

static void quiet_log(enum ggml_log_level level, const char * text, void *) {
    if (level >= GGML_LOG_LEVEL_WARN) fputs(text, stderr);
    if (strstr(text, "Flash Attention")) {
        std::string t = text;
        while (!t.empty() && (t.back() == '\n' || t.back() == ' ')) t.pop_back();
        g_fa_log = t;
    }
}

static std::string hex(const std::string & s) {
    static const char * d = "0123456789abcdef";
    std::string out;
    for (unsigned char c : s) { out += d[c >> 4]; out += d[c & 15]; }
    return out;
}

static std::string unhex(const char * h) {
    std::string out;
    size_t n = strlen(h);
    if (n % 2) { fprintf(stderr, "odd hex string\n"); exit(2); }
    for (size_t i = 0; i < n; i += 2) {
        char b[3] = {h[i], h[i + 1], 0};
        out += (char) strtol(b, nullptr, 16);
    }
    return out;
}

static std::string json_str(const char * s) {
    std::string out = "\"";
    for (const char * p = s; *p; p++) {
        unsigned char c = *p;
        if (c == '"' || c == '\\') { out += '\\'; out += (char) c; }
        else if (c < 0x20) { char b[8]; snprintf(b, sizeof b, "\\u%04x", c); out += b; }
        else out += (char) c;
    }
    return out + "\"";
}

static std::string piece(const llama_vocab * vocab, llama_token t) {
    char buf[256];
    int n = llama_token_to_piece(vocab, t, buf, sizeof buf, 0, true);
    if (n < 0) { fprintf(stderr, "piece too long\n"); exit(1); }
    return std::string(buf, n);
}

static std::string meta(const llama_model * model, const char * key) {
    char buf[512];
    int n = llama_model_meta_val_str(model, key, buf, sizeof buf);
    return n < 0 ? "" : std::string(buf);
}

static llama_model * load(const char * path) {
    llama_model_params mp = llama_model_default_params();
    mp.n_gpu_layers = 0;
    mp.progress_callback = [](float, void *) { return true; };  // no progress dots
    llama_model * model = llama_model_load_from_file(path, mp);
    if (!model) { fprintf(stderr, "cannot load %s\n", path); exit(1); }
    return model;
}

static llama_context * make_ctx(llama_model * model, int n_ctx, int threads) {
    llama_context_params cp = llama_context_default_params();
    cp.n_ctx = n_ctx;
    cp.n_batch = n_ctx;
    cp.n_ubatch = n_ctx;
    cp.n_threads = threads;
    cp.n_threads_batch = threads;
    cp.no_perf = true;
    // diagnostics (the fixtures use llama.cpp's defaults): an F32 KV cache, flash attention off
    if (getenv("SOFTPRESS_REF_KV_F32") && atoi(getenv("SOFTPRESS_REF_KV_F32"))) {
        cp.type_k = GGML_TYPE_F32;
        cp.type_v = GGML_TYPE_F32;
    }
    if (getenv("SOFTPRESS_REF_FLASH_ATTN")) {
        cp.flash_attn_type = atoi(getenv("SOFTPRESS_REF_FLASH_ATTN")) ? LLAMA_FLASH_ATTN_TYPE_ENABLED
                                                                      : LLAMA_FLASH_ATTN_TYPE_DISABLED;
    }
    llama_context * ctx = llama_init_from_model(model, cp);
    if (!ctx) { fprintf(stderr, "cannot create context\n"); exit(1); }
    return ctx;
}

static std::vector<llama_token> ids_from(int argc, char ** argv, int first) {
    std::vector<llama_token> ids;
    for (int i = first; i < argc; i++) ids.push_back(atoi(argv[i]));
    if (ids.empty()) { fprintf(stderr, "no prompt ids\n"); exit(2); }
    return ids;
}

static void decode_all(llama_context * ctx, const std::vector<llama_token> & ids, int pos0, bool all_logits) {
    llama_batch b = llama_batch_init((int) ids.size(), 0, 1);
    b.n_tokens = (int) ids.size();
    for (size_t i = 0; i < ids.size(); i++) {
        b.token[i] = ids[i];
        b.pos[i] = pos0 + (int) i;
        b.n_seq_id[i] = 1;
        b.seq_id[i][0] = 0;
        b.logits[i] = all_logits || i + 1 == ids.size();
    }
    int rc = llama_decode(ctx, b);
    llama_batch_free(b);
    if (rc != 0) { fprintf(stderr, "llama_decode failed: %d\n", rc); exit(1); }
}

int main(int argc, char ** argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s info|tokenize|detok|greedy|logits MODEL ...\n", argv[0]);
        return 2;
    }
    std::string cmd = argv[1];
    llama_log_set(quiet_log, nullptr);
    llama_backend_init();
    llama_model * model = load(argv[2]);
    const llama_vocab * vocab = llama_model_get_vocab(model);
    const int n_vocab = llama_vocab_n_tokens(vocab);

    if (cmd == "info") {
        char desc[256];
        llama_model_desc(model, desc, sizeof desc);
        printf("{\"llama_commit\":%s,\"system_info\":%s,\"model_desc\":%s,"
               "\"n_vocab\":%d,\"add_bos\":%s,\"add_eos\":%s,\"bos\":%d,\"eos\":%d,\"eot\":%d,"
               "\"rope_freq_base\":%s,\"n_ctx_train\":%d,\"n_params\":%llu,\"eog_ids\":[",
               json_str(SOFTPRESS_LLAMA_COMMIT).c_str(), json_str(llama_print_system_info()).c_str(),
               json_str(desc).c_str(), n_vocab, llama_vocab_get_add_bos(vocab) ? "true" : "false",
               llama_vocab_get_add_eos(vocab) ? "true" : "false", llama_vocab_bos(vocab),
               llama_vocab_eos(vocab), llama_vocab_eot(vocab),
               json_str(meta(model, "llama.rope.freq_base").c_str()).c_str(),
               llama_model_n_ctx_train(model), (unsigned long long) llama_model_n_params(model));
        for (int v = 0, k = 0; v < n_vocab; v++) {
            if (llama_vocab_is_eog(vocab, v)) printf("%s%d", k++ ? "," : "", v);
        }
        printf("]}\n");
    } else if (cmd == "tokenize" && argc == 6) {
        bool add_special = atoi(argv[3]) != 0, parse_special = atoi(argv[4]) != 0;
        std::string text = unhex(argv[5]);
        int n = -llama_tokenize(vocab, text.data(), (int) text.size(), nullptr, 0, add_special, parse_special);
        std::vector<llama_token> ids(n > 0 ? n : 0);
        if (n > 0 && llama_tokenize(vocab, text.data(), (int) text.size(), ids.data(), n, add_special, parse_special) != n) {
            fprintf(stderr, "tokenize failed\n");
            return 1;
        }
        printf("{\"ids\":[");
        for (int i = 0; i < n; i++) printf("%s%d", i ? "," : "", ids[i]);
        printf("],\"pieces_hex\":[");
        for (int i = 0; i < n; i++) printf("%s\"%s\"", i ? "," : "", hex(piece(vocab, ids[i])).c_str());
        printf("],\"vocab_text_hex\":[");
        for (int i = 0; i < n; i++) {
            printf("%s\"%s\"", i ? "," : "", hex(llama_vocab_get_text(vocab, ids[i])).c_str());
        }
        printf("]}\n");
    } else if (cmd == "detok" && argc >= 4) {
        std::string bytes;
        for (llama_token t : ids_from(argc, argv, 3)) bytes += piece(vocab, t);
        printf("{\"text_hex\":\"%s\"}\n", hex(bytes).c_str());
    } else if (cmd == "greedy" && argc >= 7) {
        int threads = atoi(argv[3]), n_new = atoi(argv[4]), n_ctx = atoi(argv[5]);
        std::vector<llama_token> prompt = ids_from(argc, argv, 6);
        if ((int) prompt.size() + n_new > n_ctx) { fprintf(stderr, "context too small\n"); return 2; }
        llama_context * ctx = make_ctx(model, n_ctx, threads);
        llama_sampler * smpl = llama_sampler_chain_init(llama_sampler_chain_default_params());
        llama_sampler_chain_add(smpl, llama_sampler_init_greedy());
        decode_all(ctx, prompt, 0, false);
        std::vector<llama_token> out;
        std::vector<float> gaps;
        std::string bytes;
        bool eog = false;
        int pos = (int) prompt.size();
        while ((int) out.size() < n_new) {
            const float * lg = llama_get_logits_ith(ctx, -1);
            float a = -INFINITY, b = -INFINITY;
            for (int v = 0; v < n_vocab; v++) {
                if (lg[v] > a) { b = a; a = lg[v]; } else if (lg[v] > b) b = lg[v];
            }
            llama_token t = llama_sampler_sample(smpl, ctx, -1);
            out.push_back(t);
            gaps.push_back(a - b);
            bytes += piece(vocab, t);
            if (llama_vocab_is_eog(vocab, t)) { eog = true; break; }
            decode_all(ctx, {t}, pos++, false);
        }
        printf("{\"threads\":%d,\"n_ctx\":%d,\"flash_attn\":%s,\"ids\":[", threads, n_ctx,
               json_str(g_fa_log.c_str()).c_str());
        for (size_t i = 0; i < out.size(); i++) printf("%s%d", i ? "," : "", out[i]);
        printf("],\"top2_gaps\":[");
        for (size_t i = 0; i < gaps.size(); i++) printf("%s%.5f", i ? "," : "", gaps[i]);
        printf("],\"text_hex\":\"%s\",\"stop\":\"%s\"}\n", hex(bytes).c_str(), eog ? "eog" : "length");
        llama_sampler_free(smpl);
        llama_free(ctx);
    } else if (cmd == "logits" && argc >= 6) {
        int threads = atoi(argv[3]);
        const char * out_path = argv[4];
        std::vector<llama_token> prompt = ids_from(argc, argv, 5);
        llama_context * ctx = make_ctx(model, 256, threads);
        decode_all(ctx, prompt, 0, true);
        FILE * f = fopen(out_path, "wb");
        if (!f) { fprintf(stderr, "cannot write %s\n", out_path); return 1; }
        for (size_t i = 0; i < prompt.size(); i++) {
            const float * lg = llama_get_logits_ith(ctx, (int) i);
            fwrite(lg, sizeof(float), n_vocab, f);  // x86/ARM: little-endian
        }
        fclose(f);
        printf("{\"threads\":%d,\"n_tokens\":%zu,\"n_vocab\":%d,\"flash_attn\":%s}\n", threads, prompt.size(),
               n_vocab, json_str(g_fa_log.c_str()).c_str());
        llama_free(ctx);
    } else {
        fprintf(stderr, "bad command or arguments\n");
        return 2;
    }
    llama_model_free(model);
    llama_backend_free();
    return 0;
}
