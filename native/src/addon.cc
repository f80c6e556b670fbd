// Tensor handles, data in and out, metadata, threads, seeds and memory accounting.
#include "common.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <malloc.h>

#include <cstring>
#include <vector>

namespace sp {

std::atomic<int64_t> g_liveHandles{0};
std::atomic<int64_t> g_reportedBytes{0};

// Bytes newly owned by this handle: only a tensor that is the sole owner of its storage
// counts, so views and aliases do not inflate the figure V8 sees.
static int64_t OwnedBytes(const at::Tensor& t) {
  if (!t.defined() || !t.has_storage()) return 0;
  const auto& storage = t.storage();
  if (storage.use_count() != 1) return 0;
  return static_cast<int64_t>(storage.nbytes());
}

void Release(Napi::BasicEnv env, TensorBox* box) {
  if (box->tensor.defined()) {
    box->tensor.reset();
    g_liveHandles--;
  }
  if (box->reported != 0) {
    Napi::MemoryManagement::AdjustExternalMemory(env, -box->reported);
    g_reportedBytes -= box->reported;
    box->reported = 0;
  }
}

Napi::Value Wrap(Napi::Env env, at::Tensor t) {
  auto* box = new TensorBox{std::move(t), 0};
  box->reported = OwnedBytes(box->tensor);
  if (box->reported) {
    Napi::MemoryManagement::AdjustExternalMemory(env, box->reported);
    g_reportedBytes += box->reported;
  }
  g_liveHandles++;
  return Napi::External<TensorBox>::New(env, box, [](Napi::BasicEnv env, TensorBox* b) {
    Release(env, b);
    delete b;
  });
}

TensorBox* Box(const Napi::Value& v, const char* what) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), std::string(what) + ": expected a tensor handle");
  return v.As<Napi::External<TensorBox>>().Data();
}

const at::Tensor& Unwrap(const Napi::Value& v, const char* what) {
  TensorBox* box = Box(v, what);
  if (!box->tensor.defined()) {
    throw Napi::Error::New(v.Env(), std::string(what) + ": tensor was already freed (used outside its scope?)");
  }
  return box->tensor;
}

// fromBuffer(arrayBufferView, dtypeCode, shape[]) -> handle (a copy; JS memory is not shared)
static Napi::Value FromBuffer(const Napi::CallbackInfo& info) {
  return Guard(info, "fromBuffer", [&]() -> Napi::Value {
    auto view = info[0].As<Napi::TypedArray>();
    auto dtype = static_cast<at::ScalarType>(info[1].As<Napi::Number>().Int32Value());
    auto shapeArr = info[2].As<Napi::Array>();
    std::vector<int64_t> shape(shapeArr.Length());
    int64_t numel = 1;
    for (uint32_t i = 0; i < shapeArr.Length(); i++) {
      shape[i] = shapeArr.Get(i).As<Napi::Number>().Int64Value();
      numel *= shape[i];
    }
    const size_t itemSize = c10::elementSize(dtype);
    const size_t bytes = view.ByteLength();
    if (bytes != static_cast<size_t>(numel) * itemSize) {
      throw Napi::RangeError::New(info.Env(), "fromBuffer: " + std::to_string(bytes) + " bytes given for " +
                                                  std::to_string(numel) + " elements of " +
                                                  std::to_string(itemSize) + " bytes");
    }
    auto out = at::empty(shape, at::TensorOptions().dtype(dtype));
    uint8_t* src = static_cast<uint8_t*>(view.ArrayBuffer().Data()) + view.ByteOffset();
    if (bytes) std::memcpy(out.data_ptr(), src, bytes);
    return Wrap(info.Env(), out);
  });
}

// toBuffer(handle) -> ArrayBuffer holding the elements in row-major order
static Napi::Value ToBuffer(const Napi::CallbackInfo& info) {
  return Guard(info, "toBuffer", [&]() -> Napi::Value {
    at::Tensor t = Unwrap(info[0], "toBuffer").detach().contiguous();
    const size_t bytes = t.numel() * t.element_size();
    auto buf = Napi::ArrayBuffer::New(info.Env(), bytes);
    if (bytes) std::memcpy(buf.Data(), t.data_ptr(), bytes);
    return buf;
  });
}

// meta(handle) -> [dtypeCode, requiresGrad, isLeaf, ...shape]: one call for what the JS
// Tensor caches, since each crossing of the boundary costs.
static Napi::Value Meta(const Napi::CallbackInfo& info) {
  return Guard(info, "meta", [&]() -> Napi::Value {
    const at::Tensor& t = Unwrap(info[0], "meta");
    auto sizes = t.sizes();
    auto arr = Napi::Array::New(info.Env(), 3 + sizes.size());
    arr.Set(0u, Napi::Number::New(info.Env(), static_cast<int>(t.scalar_type())));
    arr.Set(1u, Napi::Boolean::New(info.Env(), t.requires_grad()));
    arr.Set(2u, Napi::Boolean::New(info.Env(), t.is_leaf()));
    for (size_t i = 0; i < sizes.size(); i++) arr.Set(3 + i, Napi::Number::New(info.Env(), sizes[i]));
    return arr;
  });
}

static Napi::Value Item(const Napi::CallbackInfo& info) {
  return Guard(info, "item", [&]() -> Napi::Value {
    const at::Tensor& t = Unwrap(info[0], "item");
    if (t.numel() != 1) throw std::runtime_error("item() needs a one-element tensor, got " + std::to_string(t.numel()) + " elements");
    if (t.scalar_type() == at::kBool) return Napi::Boolean::New(info.Env(), t.item<bool>());
    return Napi::Number::New(info.Env(), t.item<double>());
  });
}

static Napi::Value Free(const Napi::CallbackInfo& info) {
  Release(info.Env(), Box(info[0], "free"));
  return info.Env().Undefined();
}

static Napi::Value IsFreed(const Napi::CallbackInfo& info) {
  return Napi::Boolean::New(info.Env(), !Box(info[0], "isFreed")->tensor.defined());
}

static Napi::Value SameStorage(const Napi::CallbackInfo& info) {
  const at::Tensor& a = Unwrap(info[0], "sameStorage");
  const at::Tensor& b = Unwrap(info[1], "sameStorage");
  return Napi::Boolean::New(info.Env(), a.has_storage() && b.has_storage() && a.storage().is_alias_of(b.storage()));
}

static Napi::Value Stats(const Napi::CallbackInfo& info) {
  auto o = Napi::Object::New(info.Env());
  o.Set("liveHandles", Napi::Number::New(info.Env(), static_cast<double>(g_liveHandles.load())));
  o.Set("reportedBytes", Napi::Number::New(info.Env(), static_cast<double>(g_reportedBytes.load())));
  return o;
}

static Napi::Value SetNumThreads(const Napi::CallbackInfo& info) {
  return Guard(info, "setNumThreads", [&]() -> Napi::Value {
    int n = info[0].As<Napi::Number>().Int32Value();
    if (n < 1) throw std::runtime_error("thread count must be >= 1, got " + std::to_string(n));
    at::set_num_threads(n);
    return info.Env().Undefined();
  });
}

static Napi::Value GetNumThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), at::get_num_threads());
}

static Napi::Value ManualSeed(const Napi::CallbackInfo& info) {
  return Guard(info, "manualSeed", [&]() -> Napi::Value {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_current_seed(static_cast<uint64_t>(info[0].As<Napi::Number>().Int64Value()));
    return info.Env().Undefined();
  });
}

// The default CPU generator's full state as a uint8 tensor, for exact resume.
static Napi::Value GetRngState(const Napi::CallbackInfo& info) {
  return Guard(info, "getRngState", [&]() -> Napi::Value {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    return Wrap(info.Env(), gen.get_state());
  });
}

static Napi::Value SetRngState(const Napi::CallbackInfo& info) {
  return Guard(info, "setRngState", [&]() -> Napi::Value {
    auto gen = at::detail::getDefaultCPUGenerator();
    std::lock_guard<std::mutex> lock(gen.mutex());
    gen.set_state(Unwrap(info[0], "setRngState"));
    return info.Env().Undefined();
  });
}

static Napi::Value Config(const Napi::CallbackInfo& info) {
  return Napi::String::New(info.Env(), at::show_config() + at::get_parallel_info());
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  // Keep large buffers (logits, activations) in the heap instead of mmap/munmap per step:
  // measured to matter a lot for training steps on this machine (see bench-spec.md).
  mallopt(M_MMAP_MAX, 0);
  mallopt(M_TRIM_THRESHOLD, -1);
  exports.Set("fromBuffer", Napi::Function::New(env, FromBuffer));
  exports.Set("toBuffer", Napi::Function::New(env, ToBuffer));
  exports.Set("meta", Napi::Function::New(env, Meta));
  exports.Set("item", Napi::Function::New(env, Item));
  exports.Set("free", Napi::Function::New(env, Free));
  exports.Set("isFreed", Napi::Function::New(env, IsFreed));
  exports.Set("sameStorage", Napi::Function::New(env, SameStorage));
  exports.Set("stats", Napi::Function::New(env, Stats));
  exports.Set("setNumThreads", Napi::Function::New(env, SetNumThreads));
  exports.Set("getNumThreads", Napi::Function::New(env, GetNumThreads));
  exports.Set("manualSeed", Napi::Function::New(env, ManualSeed));
  exports.Set("getRngState", Napi::Function::New(env, GetRngState));
  exports.Set("setRngState", Napi::Function::New(env, SetRngState));
  exports.Set("config", Napi::Function::New(env, Config));
  InitDispatch(env, exports);
  InitAutograd(env, exports);
  InitC10d(env, exports);
  InitFused(env, exports);
  InitQuant(env, exports);
  return exports;
}

}  // namespace sp

static Napi::Object InitAddon(Napi::Env env, Napi::Object exports) { return sp::Init(env, exports); }

NODE_API_MODULE(softpress_native, InitAddon)
