// Autograd: backward from one or several roots, gradients, grad mode.
#include "common.h"

#include <ATen/core/grad_mode.h>  // at::GradMode (libtorch 2.x no longer pulls it in through autograd.h)
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/profiler_legacy.h>

#include <memory>

#include <vector>

namespace sp {

static std::vector<at::Tensor> TensorList(const Napi::Value& v, const char* what) {
  auto arr = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  out.reserve(arr.Length());
  for (uint32_t i = 0; i < arr.Length(); i++) {
    Napi::Value e = arr.Get(i);
    out.push_back(e.IsNull() || e.IsUndefined() ? at::Tensor() : Unwrap(e, what));
  }
  return out;
}

// backward(roots[], grads[] (null = ones for scalars), retainGraph)
static Napi::Value Backward(const Napi::CallbackInfo& info) {
  return Guard(info, "backward", [&]() -> Napi::Value {
    auto roots = TensorList(info[0], "backward");
    auto grads = TensorList(info[1], "backward");
    bool retain = info[2].ToBoolean().Value();
    torch::autograd::backward(roots, grads, retain, false);
    return info.Env().Undefined();
  });
}

// grad(outputs[], inputs[], gradOutputs[], retainGraph, createGraph, allowUnused) -> grads[]
static Napi::Value Grad(const Napi::CallbackInfo& info) {
  return Guard(info, "grad", [&]() -> Napi::Value {
    auto outputs = TensorList(info[0], "grad");
    auto inputs = TensorList(info[1], "grad");
    auto gradOutputs = TensorList(info[2], "grad");
    bool retain = info[3].ToBoolean().Value();
    bool create = info[4].ToBoolean().Value();
    bool allowUnused = info[5].ToBoolean().Value();
    auto grads = torch::autograd::grad(outputs, inputs, gradOutputs, retain, create, allowUnused);
    auto arr = Napi::Array::New(info.Env(), grads.size());
    for (size_t i = 0; i < grads.size(); i++) {
      arr.Set(i, grads[i].defined() ? Wrap(info.Env(), grads[i]) : info.Env().Null());
    }
    return arr;
  });
}

static Napi::Value GetGrad(const Napi::CallbackInfo& info) {
  return Guard(info, "grad", [&]() -> Napi::Value {
    const at::Tensor& g = Unwrap(info[0], "grad").grad();
    return g.defined() ? Wrap(info.Env(), g) : info.Env().Null();
  });
}

// setGrad(t, g | null): null clears the gradient (zeroGrad with set_to_none semantics).
static Napi::Value SetGrad(const Napi::CallbackInfo& info) {
  return Guard(info, "setGrad", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "setGrad");
    if (info[1].IsNull() || info[1].IsUndefined()) t.mutable_grad() = at::Tensor();
    else t.mutable_grad() = Unwrap(info[1], "setGrad");
    return info.Env().Undefined();
  });
}

static Napi::Value SetRequiresGrad(const Napi::CallbackInfo& info) {
  return Guard(info, "requiresGrad", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "requiresGrad");
    t.requires_grad_(info[1].ToBoolean().Value());
    return info.Env().Undefined();
  });
}

static Napi::Value SetGradEnabled(const Napi::CallbackInfo& info) {
  bool previous = at::GradMode::is_enabled();
  at::GradMode::set_enabled(info[0].ToBoolean().Value());
  return Napi::Boolean::New(info.Env(), previous);
}

static Napi::Value IsGradEnabled(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), at::GradMode::is_enabled());
}

// libtorch's operator profiler, written as a Chrome trace (for `bench model --profile`).
static std::unique_ptr<torch::autograd::profiler::RecordProfile> g_profile;

static Napi::Value ProfilerStart(const Napi::CallbackInfo& info) {
  return Guard(info, "profilerStart", [&]() -> Napi::Value {
    if (g_profile) throw std::runtime_error("the profiler is already running");
    g_profile = std::make_unique<torch::autograd::profiler::RecordProfile>(info[0].As<Napi::String>().Utf8Value());
    return info.Env().Undefined();
  });
}

static Napi::Value ProfilerStop(const Napi::CallbackInfo& info) {
  return Guard(info, "profilerStop", [&]() -> Napi::Value {
    if (!g_profile) throw std::runtime_error("the profiler is not running");
    g_profile.reset();  // writes the trace
    return info.Env().Undefined();
  });
}

void InitAutograd(Napi::Env env, Napi::Object exports) {
  exports.Set("profilerStart", Napi::Function::New(env, ProfilerStart));
  exports.Set("profilerStop", Napi::Function::New(env, ProfilerStop));
  exports.Set("backward", Napi::Function::New(env, Backward));
  exports.Set("grad", Napi::Function::New(env, Grad));
  exports.Set("getGrad", Napi::Function::New(env, GetGrad));
  exports.Set("setGrad", Napi::Function::New(env, SetGrad));
  exports.Set("setRequiresGrad", Napi::Function::New(env, SetRequiresGrad));
  exports.Set("setGradEnabled", Napi::Function::New(env, SetGradEnabled));
  exports.Set("isGradEnabled", Napi::Function::New(env, IsGradEnabled));
}

}  // namespace sp
