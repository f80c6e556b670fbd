// Block-affine 8-bit weights for matrix-vector products: each block of 32 consecutive weights
// of a row is scale * q + offset with q in 0..255 (uint8) and scale/offset float32. A weight
// matrix is only converted when every weight is reproduced to within a tolerance that the
// caller gives (relative to its block's largest magnitude), which holds for weights that came
// from a block-quantized file (GGUF Q4_0/Q4_1/Q5_x/Q8_0: at most 256 levels per 32 weights)
// and fails for ordinary float weights; so a product over them differs from the float32
// product by rounding only. What it saves is memory traffic: 1.25 bytes per weight instead of 4,
// which is what a one-row product (batch-1 decoding) is bound by.
// Generic: a matrix format and its product, nothing of a model.
#include "common.h"

#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>  // at::GradMode (libtorch 2.x no longer pulls it in through ATen.h)

#include <algorithm>
#include <cmath>
#include <vector>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define SP_X86 1
#endif

namespace sp {

namespace {

constexpr int64_t kBlock = 32;

// One block's scale/offset and codes, or false when no step reproduces it within tol.
bool QuantizeBlock(const float* v, uint8_t* q, float* scale, float* offset, double tolRel) {
  float lo = v[0], hi = v[0], amax = 0;
  for (int64_t j = 0; j < kBlock; j++) {
    lo = std::min(lo, v[j]);
    hi = std::max(hi, v[j]);
    amax = std::max(amax, std::fabs(v[j]));
  }
  *offset = lo;
  if (hi == lo) {
    *scale = 0;
    std::fill(q, q + kBlock, 0);
    return true;
  }
  const double tol = tolRel * amax;
  // Candidate steps: the common step of all values (a tolerant Euclid over their distances
  // from the lowest: the quantizer's own step even when no two neighbouring levels occur), the
  // smallest gap between distinct values, then the range over 255.
  float sorted[kBlock];
  std::copy(v, v + kBlock, sorted);
  std::sort(sorted, sorted + kBlock);
  float gap = hi - lo;
  for (int64_t j = 1; j < kBlock; j++) {
    const float d = sorted[j] - sorted[j - 1];
    if (d > 0 && d < gap) gap = d;
  }
  double step = hi - lo;
  for (int64_t j = 0; j < kBlock; j++) {
    double a = step, b = static_cast<double>(v[j]) - lo;
    if (b > a) std::swap(a, b);
    while (b > tol) {
      double r = std::fmod(a, b);
      if (b - r <= tol) r = 0;
      a = b;
      b = r;
    }
    step = a;
  }
  const float candidates[3] = {static_cast<float>(step), gap, (hi - lo) / 255.0f};
  for (float s : candidates) {
    if (!(s > 0) || (hi - lo) / s > 255.5f) continue;
    bool ok = true;
    for (int64_t j = 0; j < kBlock && ok; j++) {
      const float code = std::nearbyint((v[j] - lo) / s);
      if (code < 0 || code > 255) ok = false;
      else if (std::fabs(static_cast<double>(s) * code + lo - v[j]) > tol) ok = false;
      else q[j] = static_cast<uint8_t>(code);
    }
    if (ok) {
      *scale = s;
      return true;
    }
  }
  return false;
}

// quantizeBlocks(w [out, in] float32, tolRel) -> [codes uint8 [out, in], scale [out, in/32],
// offset [out, in/32]] or null when in is not a multiple of 32 or a block is not reproduced.
Napi::Value QuantizeBlocks(const Napi::CallbackInfo& info) {
  return Guard(info, "quantizeBlocks", [&]() -> Napi::Value {
    at::Tensor w = Unwrap(info[0], "quantizeBlocks").detach();
    const double tolRel = info[1].As<Napi::Number>().DoubleValue();
    if (w.dim() != 2 || w.scalar_type() != at::kFloat || w.size(1) % kBlock != 0) return info.Env().Null();
    w = w.contiguous();
    const int64_t out = w.size(0), in = w.size(1), nb = in / kBlock;
    at::Tensor codes = at::empty({out, in}, at::kByte);
    at::Tensor scale = at::empty({out, nb}, at::kFloat);
    at::Tensor offset = at::empty({out, nb}, at::kFloat);
    const float* src = w.data_ptr<float>();
    uint8_t* q = codes.data_ptr<uint8_t>();
    float* s = scale.data_ptr<float>();
    float* m = offset.data_ptr<float>();
    std::atomic<bool> ok{true};
    at::parallel_for(0, out, 16, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1 && ok.load(std::memory_order_relaxed); r++)
        for (int64_t b = 0; b < nb; b++)
          if (!QuantizeBlock(src + r * in + b * kBlock, q + r * in + b * kBlock, s + r * nb + b, m + r * nb + b, tolRel)) {
            ok = false;
            break;
          }
    });
    if (!ok) return info.Env().Null();
    auto arr = Napi::Array::New(info.Env(), 3);
    arr.Set(0u, Wrap(info.Env(), codes));
    arr.Set(1u, Wrap(info.Env(), scale));
    arr.Set(2u, Wrap(info.Env(), offset));
    return arr;
  });
}

// y[r] = sum_b scale[r,b] * sum_j q[r,b,j] x[b,j] + offset[r,b] * xsum[b], rows r0..r1.
void RowsScalar(const uint8_t* q, const float* s, const float* m, const float* x, const float* xs, int64_t in, int64_t nb, int64_t r0,
                int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* qr = q + r * in;
    float acc = 0, accM = 0;
    for (int64_t b = 0; b < nb; b++) {
      float dot = 0;
      for (int64_t j = 0; j < kBlock; j++) dot += static_cast<float>(qr[b * kBlock + j]) * x[b * kBlock + j];
      acc += s[r * nb + b] * dot;
      accM += m[r * nb + b] * xs[b];
    }
    y[r] = acc + accM;
  }
}

#ifdef SP_X86
__attribute__((target("avx2,fma"))) inline __m256 Codes8(const uint8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}

__attribute__((target("avx2,fma"))) void RowsAvx2(const uint8_t* q, const float* s, const float* m, const float* x, const float* xs, int64_t in,
                                                   int64_t nb, int64_t r0, int64_t r1, float* y) {
  for (int64_t r = r0; r < r1; r++) {
    const uint8_t* qr = q + r * in;
    const float* sr = s + r * nb;
    const float* mr = m + r * nb;
    __m256 acc = _mm256_setzero_ps();
    float accM = 0;
    for (int64_t b = 0; b < nb; b++) {
      const uint8_t* qb = qr + b * kBlock;
      const float* xb = x + b * kBlock;
      __m256 dot = _mm256_mul_ps(Codes8(qb), _mm256_loadu_ps(xb));
      dot = _mm256_fmadd_ps(Codes8(qb + 8), _mm256_loadu_ps(xb + 8), dot);
      dot = _mm256_fmadd_ps(Codes8(qb + 16), _mm256_loadu_ps(xb + 16), dot);
      dot = _mm256_fmadd_ps(Codes8(qb + 24), _mm256_loadu_ps(xb + 24), dot);
      acc = _mm256_fmadd_ps(_mm256_set1_ps(sr[b]), dot, acc);
      accM += mr[b] * xs[b];
    }
    __m128 h = _mm_add_ps(_mm256_castps256_ps128(acc), _mm256_extractf128_ps(acc, 1));
    h = _mm_add_ps(h, _mm_movehl_ps(h, h));
    h = _mm_add_ss(h, _mm_movehdup_ps(h));
    y[r] = _mm_cvtss_f32(h) + accM;
  }
}
#endif

// blockLinear(x [..., in] float32 with one row, codes, scale, offset, bias|null) -> [..., out]
Napi::Value BlockLinear(const Napi::CallbackInfo& info) {
  return Guard(info, "blockLinear", [&]() -> Napi::Value {
    const at::Tensor& xIn = Unwrap(info[0], "blockLinear");
    const at::Tensor& codes = Unwrap(info[1], "blockLinear");
    const at::Tensor& scale = Unwrap(info[2], "blockLinear");
    const at::Tensor& offset = Unwrap(info[3], "blockLinear");
    const at::Tensor* bias = info[4].IsNull() || info[4].IsUndefined() ? nullptr : &Unwrap(info[4], "blockLinear");
    if (codes.dim() != 2 || codes.scalar_type() != at::kByte || !codes.is_contiguous()) throw std::runtime_error("codes must be contiguous uint8 [out, in]");
    const int64_t out = codes.size(0), in = codes.size(1), nb = in / kBlock;
    if (in % kBlock != 0 || scale.sizes() != at::IntArrayRef({out, nb}) || offset.sizes() != scale.sizes() || scale.scalar_type() != at::kFloat ||
        offset.scalar_type() != at::kFloat || !scale.is_contiguous() || !offset.is_contiguous())
      throw std::runtime_error("scale/offset must be contiguous float32 [out, in/32]");
    if (xIn.scalar_type() != at::kFloat || xIn.dim() < 1 || xIn.size(-1) != in || xIn.numel() != in)
      throw std::runtime_error("x must be one float32 row of " + std::to_string(in) + " features");
    if (xIn.requires_grad() && at::GradMode::is_enabled()) throw std::runtime_error("no gradient: use it without autograd");
    at::Tensor x = xIn.detach().reshape({in}).contiguous();
    const float* xp = x.data_ptr<float>();
    std::vector<float> xs(nb);
    for (int64_t b = 0; b < nb; b++) {
      float t = 0;
      for (int64_t j = 0; j < kBlock; j++) t += xp[b * kBlock + j];
      xs[b] = t;
    }
    at::Tensor y = at::empty({out}, at::kFloat);
    float* yp = y.data_ptr<float>();
    const uint8_t* q = codes.data_ptr<uint8_t>();
    const float* s = scale.data_ptr<float>();
    const float* m = offset.data_ptr<float>();
#ifdef SP_X86
    static const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    static const bool avx2 = false;
#endif
    at::parallel_for(0, out, 128, [&](int64_t r0, int64_t r1) {
#ifdef SP_X86
      if (avx2) return RowsAvx2(q, s, m, xp, xs.data(), in, nb, r0, r1, yp);
#endif
      RowsScalar(q, s, m, xp, xs.data(), in, nb, r0, r1, yp);
    });
    if (bias) y = y.add(*bias);
    std::vector<int64_t> shape(xIn.sizes().begin(), xIn.sizes().end() - 1);
    shape.push_back(out);
    return Wrap(info.Env(), y.reshape(shape));
  });
}

// version(t) -> the tensor's in-place modification counter (shared by views of one storage).
Napi::Value Version(const Napi::CallbackInfo& info) {
  return Guard(info, "version", [&]() -> Napi::Value {
    return Napi::Number::New(info.Env(), static_cast<double>(Unwrap(info[0], "version")._version()));
  });
}

}  // namespace

void InitQuant(Napi::Env env, Napi::Object exports) {
  exports.Set("quantizeBlocks", Napi::Function::New(env, QuantizeBlocks));
  exports.Set("blockLinear", Napi::Function::New(env, BlockLinear));
  exports.Set("version", Napi::Function::New(env, Version));
}

}  // namespace sp
