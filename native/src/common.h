// Shared pieces of the softpress addon: the tensor handle and error conversion.
// The addon is generic: it knows tensors, ATen operators and autograd, nothing of models.
#pragma once

#include <napi.h>
#include <ATen/ATen.h>

#include <atomic>
#include <string>

namespace sp {

// A JS-owned reference to an at::Tensor. `reset()` drops it early (scope exit); the
// finalizer drops whatever is left when V8 collects the handle.
struct TensorBox {
  at::Tensor tensor;
  int64_t reported = 0;  // bytes reported to V8 as external memory for this handle
};

extern std::atomic<int64_t> g_liveHandles;
extern std::atomic<int64_t> g_reportedBytes;

Napi::Value Wrap(Napi::Env env, at::Tensor t);
TensorBox* Box(const Napi::Value& v, const char* what);
const at::Tensor& Unwrap(const Napi::Value& v, const char* what);
void Release(Napi::BasicEnv env, TensorBox* box);

// Runs `body`, turning libtorch and C++ exceptions into JS exceptions so that the process
// never aborts on a bad call.
template <typename F>
Napi::Value Guard(const Napi::CallbackInfo& info, const char* op, F body) {
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Napi::Error::New(info.Env(), std::string(op) + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), std::string(op) + ": " + e.what());
  }
}

// Registration of each translation unit's functions on the module exports.
void InitDispatch(Napi::Env env, Napi::Object exports);
void InitAutograd(Napi::Env env, Napi::Object exports);
void InitC10d(Napi::Env env, Napi::Object exports);
void InitFused(Napi::Env env, Napi::Object exports);
void InitQuant(Napi::Env env, Napi::Object exports);

}  // namespace sp
