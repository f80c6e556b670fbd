// Generic access to every ATen operator through the c10 dispatcher's boxed calling
// convention: JS looks an operator up once by schema name, then calls it with positional
// arguments converted by the schema's declared types. Autograd, type promotion and
// broadcasting are libtorch's own, exactly as from C++ or Python.
#include "common.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <deque>
#include <mutex>
#include <shared_mutex>
#include <sstream>
#include <vector>

namespace sp {

namespace {

struct OpEntry {
  c10::OperatorHandle handle;
  std::string name;
};

// One table for the process: every isolate (the main thread and worker threads each load the
// addon) looks operators up into it and calls them from it. A deque keeps its entries in place
// as it grows, so an entry found under the shared lock stays valid after the lock is released.
std::deque<OpEntry> g_ops;
std::shared_mutex g_opsMutex;

const OpEntry* FindOp(size_t id) {
  std::shared_lock<std::shared_mutex> lock(g_opsMutex);
  return id < g_ops.size() ? &g_ops[id] : nullptr;
}

[[noreturn]] void BadArg(const std::string& ctx, const std::string& msg) {
  throw std::runtime_error(ctx + ": " + msg);
}

int64_t ToInt(const Napi::Value& v, const std::string& ctx) {
  if (v.IsBoolean()) return v.As<Napi::Boolean>().Value() ? 1 : 0;
  if (!v.IsNumber()) BadArg(ctx, "expected an integer");
  double d = v.As<Napi::Number>().DoubleValue();
  if (d != static_cast<double>(static_cast<int64_t>(d))) BadArg(ctx, "expected an integer, got " + std::to_string(d));
  return static_cast<int64_t>(d);
}

double ToDouble(const Napi::Value& v, const std::string& ctx) {
  if (!v.IsNumber()) BadArg(ctx, "expected a number");
  return v.As<Napi::Number>().DoubleValue();
}

bool ToBool(const Napi::Value& v, const std::string& ctx) {
  if (!v.IsBoolean()) BadArg(ctx, "expected a boolean");
  return v.As<Napi::Boolean>().Value();
}

Napi::Array ToArray(const Napi::Value& v, const std::string& ctx) {
  if (!v.IsArray()) BadArg(ctx, "expected an array");
  return v.As<Napi::Array>();
}

c10::IValue ToIValue(const Napi::Value& v, const c10::TypePtr& type, const std::string& ctx) {
  using K = c10::TypeKind;
  switch (type->kind()) {
    case K::TensorType:
      return Unwrap(v, ctx.c_str());
    case K::OptionalType:
      if (v.IsNull() || v.IsUndefined()) return c10::IValue();
      return ToIValue(v, type->castRaw<c10::OptionalType>()->getElementType(), ctx);
    case K::IntType:
    case K::SymIntType:
    case K::ScalarTypeType:
    case K::LayoutType:
    case K::MemoryFormatType:
      return ToInt(v, ctx);
    case K::FloatType:
      return ToDouble(v, ctx);
    case K::BoolType:
      return ToBool(v, ctx);
    case K::NumberType: {
      // A Scalar: integers stay integers so that integer tensors keep their dtype.
      if (v.IsBoolean()) return v.As<Napi::Boolean>().Value();
      double d = ToDouble(v, ctx);
      if (d == static_cast<double>(static_cast<int64_t>(d)) && std::abs(d) < 9.0e15) return static_cast<int64_t>(d);
      return d;
    }
    case K::StringType:
      if (!v.IsString()) BadArg(ctx, "expected a string");
      return v.As<Napi::String>().Utf8Value();
    case K::DeviceObjType:
      if (!v.IsString()) BadArg(ctx, "expected a device string");
      return c10::Device(v.As<Napi::String>().Utf8Value());
    case K::ListType: {
      auto arr = ToArray(v, ctx);
      auto elem = type->castRaw<c10::ListType>()->getElementType();
      const uint32_t n = arr.Length();
      switch (elem->kind()) {
        case K::IntType:
        case K::SymIntType: {
          c10::List<int64_t> out;
          out.reserve(n);
          for (uint32_t i = 0; i < n; i++) out.push_back(ToInt(arr.Get(i), ctx));
          return out;
        }
        case K::FloatType: {
          c10::List<double> out;
          for (uint32_t i = 0; i < n; i++) out.push_back(ToDouble(arr.Get(i), ctx));
          return out;
        }
        case K::BoolType: {
          c10::List<bool> out;
          for (uint32_t i = 0; i < n; i++) out.push_back(ToBool(arr.Get(i), ctx));
          return out;
        }
        case K::TensorType: {
          c10::List<at::Tensor> out;
          out.reserve(n);
          for (uint32_t i = 0; i < n; i++) out.push_back(Unwrap(arr.Get(i), ctx.c_str()));
          return out;
        }
        case K::OptionalType: {
          c10::List<c10::optional<at::Tensor>> out;
          for (uint32_t i = 0; i < n; i++) {
            Napi::Value e = arr.Get(i);
            if (e.IsNull() || e.IsUndefined()) out.push_back(c10::nullopt);
            else out.push_back(Unwrap(e, ctx.c_str()));
          }
          return out;
        }
        default:
          BadArg(ctx, "unsupported list element type " + elem->str());
      }
    }
    case K::GeneratorType:
      if (v.IsNull() || v.IsUndefined()) return c10::IValue();
      BadArg(ctx, "generators are not supported; seed the default generator instead");
    default:
      BadArg(ctx, "unsupported argument type " + type->str());
  }
}

Napi::Value FromIValue(Napi::Env env, const c10::IValue& v) {
  if (v.isTensor()) {
    const at::Tensor& t = v.toTensor();
    return t.defined() ? Wrap(env, t) : env.Null();
  }
  if (v.isNone()) return env.Null();
  if (v.isInt()) return Napi::Number::New(env, static_cast<double>(v.toInt()));
  if (v.isDouble()) return Napi::Number::New(env, v.toDouble());
  if (v.isBool()) return Napi::Boolean::New(env, v.toBool());
  if (v.isTensorList()) {
    auto list = v.toTensorList();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, Wrap(env, list.get(i)));
    return arr;
  }
  if (v.isIntList()) {
    auto list = v.toIntList();
    auto arr = Napi::Array::New(env, list.size());
    for (size_t i = 0; i < list.size(); i++) arr.Set(i, Napi::Number::New(env, static_cast<double>(list.get(i))));
    return arr;
  }
  if (v.isTuple()) {
    const auto& elems = v.toTupleRef().elements();
    auto arr = Napi::Array::New(env, elems.size());
    for (size_t i = 0; i < elems.size(); i++) arr.Set(i, FromIValue(env, elems[i]));
    return arr;
  }
  if (v.isString()) return Napi::String::New(env, v.toStringRef());
  throw std::runtime_error("unsupported return type " + v.tagKind());
}

// lookupOp(name, overload) -> id
Napi::Value LookupOp(const Napi::CallbackInfo& info) {
  return Guard(info, "lookupOp", [&]() -> Napi::Value {
    std::string name = info[0].As<Napi::String>().Utf8Value();
    std::string overload = info.Length() > 1 && info[1].IsString() ? info[1].As<Napi::String>().Utf8Value() : "";
    auto handle = c10::Dispatcher::singleton().findSchema({name, overload});
    if (!handle) throw std::runtime_error("no operator " + name + (overload.empty() ? "" : "." + overload));
    std::unique_lock<std::shared_mutex> lock(g_opsMutex);
    g_ops.push_back(OpEntry{*handle, overload.empty() ? name : name + "." + overload});
    return Napi::Number::New(info.Env(), static_cast<double>(g_ops.size() - 1));
  });
}

// opSchema(id) -> the schema as text, for error messages and docs
Napi::Value OpSchema(const Napi::CallbackInfo& info) {
  size_t id = info[0].As<Napi::Number>().Uint32Value();
  const OpEntry* op = FindOp(id);
  if (!op) throw Napi::RangeError::New(info.Env(), "opSchema: unknown operator id");
  std::ostringstream s;
  s << op->handle.schema();
  return Napi::String::New(info.Env(), s.str());
}

// callOp(id, args[], discardResult) -> result (tensor, number, array for tuples), or
// undefined when discardResult (in-place updates that return an alias of an input).
Napi::Value CallOp(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  size_t id = info[0].As<Napi::Number>().Uint32Value();
  const OpEntry* found = FindOp(id);
  if (!found) throw Napi::RangeError::New(env, "callOp: unknown operator id");
  const OpEntry& op = *found;
  return Guard(info, op.name.c_str(), [&]() -> Napi::Value {
    const auto& schema = op.handle.schema();
    const auto& args = schema.arguments();
    auto given = info[1].As<Napi::Array>();
    const uint32_t nGiven = given.Length();
    if (nGiven > args.size()) {
      throw std::runtime_error("takes " + std::to_string(args.size()) + " arguments, got " + std::to_string(nGiven));
    }
    torch::jit::Stack stack;
    stack.reserve(args.size());
    for (size_t i = 0; i < args.size(); i++) {
      Napi::Value v = i < nGiven ? given.Get(static_cast<uint32_t>(i)) : env.Undefined();
      const auto& arg = args[i];
      if (v.IsUndefined()) {
        if (arg.default_value()) {
          stack.push_back(*arg.default_value());
          continue;
        }
        if (arg.type()->kind() == c10::TypeKind::OptionalType) {
          stack.emplace_back();
          continue;
        }
        throw std::runtime_error("missing argument '" + arg.name() + "'");
      }
      stack.push_back(ToIValue(v, arg.type(), "argument '" + arg.name() + "'"));
    }
    op.handle.callBoxed(&stack);
    if (info.Length() > 2 && info[2].ToBoolean().Value()) return env.Undefined();
    if (stack.empty()) return env.Undefined();
    if (stack.size() == 1) return FromIValue(env, stack[0]);
    auto arr = Napi::Array::New(env, stack.size());
    for (size_t i = 0; i < stack.size(); i++) arr.Set(i, FromIValue(env, stack[i]));
    return arr;
  });
}

}  // namespace

void InitDispatch(Napi::Env env, Napi::Object exports) {
  exports.Set("lookupOp", Napi::Function::New(env, LookupOp));
  exports.Set("opSchema", Napi::Function::New(env, OpSchema));
  exports.Set("callOp", Napi::Function::New(env, CallOp));
}

}  // namespace sp
