// A few composite operations in one crossing of the JS/C++ boundary each. They are written
// with the same ATen operators, in the same order, as their TypeScript definitions
// (src/tensor/tensor.ts), so results and autograd graphs are the same; what they save is the
// per-call cost of the boxed dispatcher path (argument conversion, one JS handle per
// intermediate, its free), which dominates small tensors such as one decoded token.
// Generic: nothing here knows a model.
#include "common.h"

#include <ATen/Parallel.h>

#include <vector>

namespace sp {

namespace {

const at::Tensor* OptTensor(const Napi::Value& v, const char* what) {
  if (v.IsNull() || v.IsUndefined()) return nullptr;
  return &Unwrap(v, what);
}

bool IsHalf(const at::Tensor& t) { return t.scalar_type() == at::kHalf || t.scalar_type() == at::kBFloat16; }

// x [..., in] @ w[out, in]^T + b. One row goes through a matrix-vector product (see linear()
// in tensor.ts for why).
at::Tensor LinearImpl(const at::Tensor& x, const at::Tensor& w, const at::Tensor* b) {
  const int64_t in = x.dim() ? x.size(-1) : 1;
  if (x.dim() >= 1 && x.numel() == in && w.dim() == 2 && w.size(1) == in) {
    at::Tensor y = at::mv(w, x.reshape({in}));
    if (b) y = y.add(*b);
    std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end() - 1);
    shape.push_back(w.size(0));
    return y.reshape(shape);
  }
  return at::linear(x, w, b ? c10::optional<at::Tensor>(*b) : c10::nullopt);
}

// linear(x, weight, bias|null) -> x W^T + b
Napi::Value Linear(const Napi::CallbackInfo& info) {
  return Guard(info, "linear", [&]() -> Napi::Value {
    return Wrap(info.Env(), LinearImpl(Unwrap(info[0], "linear"), Unwrap(info[1], "linear"), OptTensor(info[2], "linear")));
  });
}

// rmsNorm(x, weight, eps) -> x / sqrt(mean(x^2, -1) + eps) * weight, in float32 for half types.
Napi::Value RmsNorm(const Napi::CallbackInfo& info) {
  return Guard(info, "rmsNorm", [&]() -> Napi::Value {
    const at::Tensor& x = Unwrap(info[0], "rmsNorm");
    const at::Tensor& w = Unwrap(info[1], "rmsNorm");
    const double eps = info[2].As<Napi::Number>().DoubleValue();
    const bool half = IsHalf(x);
    at::Tensor x32 = half ? x.to(at::kFloat) : x;
    at::Tensor normed = x32.mul(x32.square().mean({-1}, true).add(eps).rsqrt());
    at::Tensor y = half ? normed.to(x.scalar_type()) : normed;
    return Wrap(info.Env(), y.mul(w));
  });
}

// rotary(x [..., hd], cos, sin [..., hd/2] broadcastable, interleaved, scale) -> rotated x,
// times scale when scale != 1. Interleaved (llama2.c): dims (2j, 2j+1) rotate together;
// otherwise (Hugging Face) dim j rotates with j + hd/2.
Napi::Value Rotary(const Napi::CallbackInfo& info) {
  return Guard(info, "rotary", [&]() -> Napi::Value {
    const at::Tensor& x = Unwrap(info[0], "rotary");
    const at::Tensor& cos = Unwrap(info[1], "rotary");
    const at::Tensor& sin = Unwrap(info[2], "rotary");
    const bool interleaved = info[3].As<Napi::Boolean>().Value();
    const double scale = info[4].As<Napi::Number>().DoubleValue();
    const int64_t hd = x.size(-1);
    at::Tensor out;
    if (interleaved) {
      std::vector<int64_t> pairsShape(x.sizes().begin(), x.sizes().end() - 1);
      pairsShape.push_back(hd / 2);
      pairsShape.push_back(2);
      at::Tensor pairs = x.reshape(pairsShape);
      at::Tensor x0 = pairs.select(-1, 0);
      at::Tensor x1 = pairs.select(-1, 1);
      at::Tensor r0 = x0.mul(cos).sub(x1.mul(sin));
      at::Tensor r1 = x0.mul(sin).add(x1.mul(cos));
      out = at::cat({r0.unsqueeze(-1), r1.unsqueeze(-1)}, -1).reshape(x.sizes());
    } else {
      at::Tensor x1 = x.narrow(-1, 0, hd / 2);
      at::Tensor x2 = x.narrow(-1, hd / 2, hd / 2);
      out = at::cat({x1.mul(cos).sub(x2.mul(sin)), x2.mul(cos).add(x1.mul(sin))}, -1);
    }
    if (scale != 1.0) out = out.mul(scale);
    return Wrap(info.Env(), out);
  });
}

// narrowCopy(dst, dim, start, src): dst.narrow(dim, start, src.size(dim)).copy_(src), in place.
Napi::Value NarrowCopy(const Napi::CallbackInfo& info) {
  return Guard(info, "narrowCopy", [&]() -> Napi::Value {
    const at::Tensor& dst = Unwrap(info[0], "narrowCopy");
    const int64_t dim = info[1].As<Napi::Number>().Int64Value();
    const int64_t start = info[2].As<Napi::Number>().Int64Value();
    const at::Tensor& src = Unwrap(info[3], "narrowCopy");
    dst.narrow(dim, start, src.size(dim)).copy_(src);
    return info.Env().Undefined();
  });
}

// softmax(q k^T + mask) v for q [B, h, T, hd], k/v [B, kvH, Tk, hd], mask [B|1, 1, 1, T, Tk]
// or undefined -> [B, T, h*hd]. The h/kvH query heads that share a kv head are stacked along the
// query axis ([B, kvH, rep*T, hd]) so k/v are not copied. Half types take the softmax in float32.
at::Tensor Attend(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const c10::optional<at::Tensor>& mask) {
  const int64_t b = q.size(0), h = q.size(1), t = q.size(2), hd = q.size(3);
  const int64_t kv = k.size(1), tk = k.size(2);
  if (h % kv != 0) throw std::runtime_error("query heads must be a multiple of kv heads");
  const int64_t rep = h / kv;
  at::Tensor scores = q.reshape({b, kv, rep * t, hd}).matmul(k.transpose(-2, -1));
  if (mask) scores = scores.view({b, kv, rep, t, tk}).add(*mask).view({b, kv, rep * t, tk});
  at::Tensor probs = IsHalf(scores) ? scores.to(at::kFloat).softmax(-1).to(scores.scalar_type()) : scores.softmax(-1);
  return probs.matmul(v).view({b, h, t, hd}).transpose(1, 2).reshape({b, t, h * hd});
}

// Query rows per block when the mask is known to be causal.
constexpr int64_t kCausalBlock = 128;

// groupedAttention(q [B, h, T, hd], k, v [B, kvH, Tk, hd], mask|null [B|1, 1, 1, T, Tk] additive,
//   causalOffset|null) -> [B, T, h*hd]: softmax(q k^T + mask) v (q already scaled).
// causalOffset = c promises that the mask hides key j from query i whenever j > i + c (causal
// attention after c prefix/past keys). Queries then go in blocks of kCausalBlock rows, each
// against the keys it can see: the hidden keys' products are skipped (up to half of them for a
// long input) and the result is the same, since their softmax weights are exactly zero.
Napi::Value GroupedAttention(const Napi::CallbackInfo& info) {
  return Guard(info, "groupedAttention", [&]() -> Napi::Value {
    const at::Tensor& q = Unwrap(info[0], "groupedAttention");
    const at::Tensor& k = Unwrap(info[1], "groupedAttention");
    const at::Tensor& v = Unwrap(info[2], "groupedAttention");
    const at::Tensor* mask = OptTensor(info[3], "groupedAttention");
    const bool causal = info.Length() > 4 && info[4].IsNumber();
    const int64_t t = q.size(2), tk = k.size(2);
    auto maskOf = [&](int64_t s, int64_t n, int64_t keys) -> c10::optional<at::Tensor> {
      if (!mask) return c10::nullopt;
      if (n == t && keys == tk) return *mask;
      const at::Tensor rows = mask->size(3) == 1 ? *mask : mask->narrow(3, s, n);
      return rows.narrow(4, 0, keys);
    };
    if (!causal || t < 2 * kCausalBlock) return Wrap(info.Env(), Attend(q, k, v, maskOf(0, t, tk)));
    const int64_t offset = info[4].As<Napi::Number>().Int64Value();
    if (offset < 0 || offset + t > tk) throw std::runtime_error("causalOffset " + std::to_string(offset) + " does not fit " + std::to_string(t) + " queries and " + std::to_string(tk) + " keys");
    std::vector<at::Tensor> outs;
    for (int64_t s = 0; s < t; s += kCausalBlock) {
      const int64_t n = std::min(kCausalBlock, t - s);
      const int64_t keys = std::min(tk, s + n + offset);
      outs.push_back(Attend(q.narrow(2, s, n), k.narrow(2, 0, keys), v.narrow(2, 0, keys), maskOf(s, n, keys)));
    }
    return Wrap(info.Env(), at::cat(outs, 1));
  });
}

}  // namespace

void InitFused(Napi::Env env, Napi::Object exports) {
  exports.Set("linear", Napi::Function::New(env, Linear));
  exports.Set("rmsNorm", Napi::Function::New(env, RmsNorm));
  exports.Set("rotary", Napi::Function::New(env, Rotary));
  exports.Set("narrowCopy", Napi::Function::New(env, NarrowCopy));
  exports.Set("groupedAttention", Napi::Function::New(env, GroupedAttention));
}

}  // namespace sp
