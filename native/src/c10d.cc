// Process groups over libtorch's c10d with the Gloo backend: a TCPStore for the rendezvous
// (rank 0 serves it), Gloo over TCP for the collectives. Generic: tensors in, tensors changed in
// place; what is trained and how is the TypeScript side's business.
//
// Every call blocks until its collective completes or fails. c10d and Gloo failures (a peer
// that closed its connection, a timeout, a mismatch) are C++ exceptions: they become JS errors
// that name the operation and the rank, never a process abort.
#include "common.h"

// The headers hide the Gloo process group unless the build says libtorch has it (Debian's does;
// its symbols are in libtorch_cpu, Gloo's own in libgloo, whose headers libgloo-dev brings).
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <chrono>
#include <string>
#include <vector>

namespace sp {

namespace {

struct GroupBox {
  c10::intrusive_ptr<c10d::TCPStore> store;
  c10::intrusive_ptr<c10d::ProcessGroupGloo> pg;
  int rank = 0;
  int size = 1;
};

GroupBox* Group(const Napi::Value& v, const char* op) {
  if (!v.IsExternal()) throw Napi::TypeError::New(v.Env(), std::string(op) + ": expected a process group handle");
  auto* g = v.As<Napi::External<GroupBox>>().Data();
  if (!g->pg) throw Napi::Error::New(v.Env(), std::string(op) + ": the process group was destroyed");
  return g;
}

// Like Guard, with the rank and group size in the message: "c10d allreduce (rank 1 of 2): ...".
template <typename F>
Napi::Value DistGuard(const Napi::CallbackInfo& info, const std::string& op, int rank, int size, F body) {
  const std::string where = "c10d " + op + " (rank " + std::to_string(rank) + " of " + std::to_string(size) + "): ";
  try {
    return body();
  } catch (const Napi::Error&) {
    throw;
  } catch (const c10::Error& e) {
    throw Napi::Error::New(info.Env(), where + e.what_without_backtrace());
  } catch (const std::exception& e) {
    throw Napi::Error::New(info.Env(), where + e.what());
  }
}

std::vector<at::Tensor> Tensors(const Napi::Value& v, const char* op) {
  if (!v.IsArray()) throw Napi::TypeError::New(v.Env(), std::string(op) + ": expected an array of tensors");
  auto arr = v.As<Napi::Array>();
  std::vector<at::Tensor> out;
  for (uint32_t i = 0; i < arr.Length(); i++) {
    const at::Tensor& t = Unwrap(arr.Get(i), op);
    if (!t.is_contiguous()) throw std::runtime_error(std::string(op) + ": tensor " + std::to_string(i) + " is not contiguous");
    if (t.requires_grad() && t.is_leaf()) {
      // In-place writes into a leaf that requires grad are refused by autograd; collectives
      // act on data (gradients, detached weights), so the caller passes detached views.
      throw std::runtime_error(std::string(op) + ": tensor " + std::to_string(i) + " requires grad (pass .detach())");
    }
    out.push_back(t);
  }
  return out;
}

void WaitAll(std::vector<c10::intrusive_ptr<c10d::Work>>& works) {
  // Wait for all before rethrowing, so that no work still writes into a tensor when JS resumes.
  std::exception_ptr first;
  for (auto& w : works) {
    try {
      w->wait();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace

// distInit(rank, size, masterAddr, masterPort, localAddr, timeoutMs, threads, joinTimeoutMs)
// -> group. Rank 0 serves the TCPStore on masterPort and waits up to joinTimeoutMs for the others
// to join; all then connect Gloo's full mesh, each binding localAddr (an address of this machine
// the others can reach). timeoutMs bounds every collective.
static Napi::Value DistInit(const Napi::CallbackInfo& info) {
  const int rank = info[0].As<Napi::Number>().Int32Value();
  const int size = info[1].As<Napi::Number>().Int32Value();
  return DistGuard(info, "init", rank, size, [&]() -> Napi::Value {
    const std::string master = info[2].As<Napi::String>().Utf8Value();
    const int port = info[3].As<Napi::Number>().Int32Value();
    const std::string local = info[4].As<Napi::String>().Utf8Value();
    const auto timeout = std::chrono::milliseconds(info[5].As<Napi::Number>().Int64Value());
    const int threads = info[6].As<Napi::Number>().Int32Value();
    const auto joinTimeout = std::chrono::milliseconds(info[7].As<Napi::Number>().Int64Value());
    if (size < 1 || rank < 0 || rank >= size) throw std::runtime_error("rank must be in [0, world size), got rank " + std::to_string(rank) + " of " + std::to_string(size));
    if (port < 1 || port > 65535) throw std::runtime_error("port must be in [1, 65535], got " + std::to_string(port));
    c10d::TCPStoreOptions so;
    so.port = static_cast<std::uint16_t>(port);
    so.isServer = rank == 0;
    so.numWorkers = static_cast<std::size_t>(size);
    so.waitWorkers = true;
    so.timeout = joinTimeout;
    auto* g = new GroupBox();
    try {
      g->store = c10::make_intrusive<c10d::TCPStore>(master, so);
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(local));
      opts->threads = threads;
      g->pg = c10::make_intrusive<c10d::ProcessGroupGloo>(g->store, rank, size, opts);
    } catch (...) {
      delete g;
      throw;
    }
    g->rank = rank;
    g->size = size;
    return Napi::External<GroupBox>::New(info.Env(), g, [](Napi::BasicEnv, GroupBox* b) { delete b; });
  });
}

// distAllreduce(group, tensors[], op) with op 0 = sum, 1 = average (sum, then divided by the
// group size), 2 = max, 3 = min. Each tensor is its own collective; all are started before any
// is waited for, so Gloo's threads pipeline them (buckets).
static Napi::Value DistAllreduce(const Napi::CallbackInfo& info) {
  GroupBox* g = Group(info[0], "allreduce");
  return DistGuard(info, "allreduce", g->rank, g->size, [&]() -> Napi::Value {
    auto tensors = Tensors(info[1], "allreduce");
    const int op = info[2].As<Napi::Number>().Int32Value();
    c10d::AllreduceOptions opts;
    switch (op) {
      case 0:
      case 1:
        opts.reduceOp = c10d::ReduceOp::SUM;
        break;
      case 2:
        opts.reduceOp = c10d::ReduceOp::MAX;
        break;
      case 3:
        opts.reduceOp = c10d::ReduceOp::MIN;
        break;
      default:
        throw std::runtime_error("unknown reduce op " + std::to_string(op));
    }
    if (op == 1) {
      for (const auto& t : tensors) {
        if (!at::isFloatingType(t.scalar_type())) throw std::runtime_error(std::string("average needs floating-point tensors, got ") + c10::toString(t.scalar_type()));
      }
    }
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(g->pg->allreduce(one, opts));
    }
    WaitAll(works);
    if (op == 1 && g->size > 1) {
      at::NoGradGuard ng;
      for (auto& t : tensors) t.div_(g->size);
    }
    return info.Env().Undefined();
  });
}

// distBroadcast(group, tensors[], root): every rank's tensors take root's values.
static Napi::Value DistBroadcast(const Napi::CallbackInfo& info) {
  GroupBox* g = Group(info[0], "broadcast");
  return DistGuard(info, "broadcast", g->rank, g->size, [&]() -> Napi::Value {
    auto tensors = Tensors(info[1], "broadcast");
    const int root = info[2].As<Napi::Number>().Int32Value();
    if (root < 0 || root >= g->size) throw std::runtime_error("root must be in [0, " + std::to_string(g->size) + "), got " + std::to_string(root));
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    for (auto& t : tensors) {
      std::vector<at::Tensor> one{t};
      works.push_back(g->pg->broadcast(one, opts));
    }
    WaitAll(works);
    return info.Env().Undefined();
  });
}

static Napi::Value DistBarrier(const Napi::CallbackInfo& info) {
  GroupBox* g = Group(info[0], "barrier");
  return DistGuard(info, "barrier", g->rank, g->size, [&]() -> Napi::Value {
    g->pg->barrier()->wait();
    return info.Env().Undefined();
  });
}

// distDestroy(group): closes the connections (the store server too, on rank 0). Idempotent.
static Napi::Value DistDestroy(const Napi::CallbackInfo& info) {
  if (!info[0].IsExternal()) throw Napi::TypeError::New(info.Env(), "destroy: expected a process group handle");
  auto* g = info[0].As<Napi::External<GroupBox>>().Data();
  return DistGuard(info, "destroy", g->rank, g->size, [&]() -> Napi::Value {
    g->pg.reset();
    g->store.reset();
    return info.Env().Undefined();
  });
}

void InitC10d(Napi::Env env, Napi::Object exports) {
  exports.Set("distInit", Napi::Function::New(env, DistInit));
  exports.Set("distAllreduce", Napi::Function::New(env, DistAllreduce));
  exports.Set("distBroadcast", Napi::Function::New(env, DistBroadcast));
  exports.Set("distBarrier", Napi::Function::New(env, DistBarrier));
  exports.Set("distDestroy", Napi::Function::New(env, DistDestroy));
}

}  // namespace sp
