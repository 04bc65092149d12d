// ONNX models into the layer graph: reads a classifier exported as ONNX (any
// framework; torchvision's exports keep the state-dict names), checks it with
// ONNX's checker and builds the engine's Graph from it, one layer per node, the
// initializers becoming params and buffers under their ONNX names. The result
// is a Model like the zoo's: it trains with every training type.
//
// Needs Debian's libonnx-dev (CMake package ONNX); link `elastic::onnx`.
//
// Operators: see kSupportedOps. A node of any other operator, or an attribute
// the engine's layers cannot express (asymmetric padding, ceil-mode pooling,
// broadcasting Add), is refused with one line naming the node.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <fmt/ranges.h>
// <sys/mman.h> (the safetensors reader maps files) defines MAP_TYPE, a name
// ONNX's parser uses as an enumerator.
#pragma push_macro("MAP_TYPE")
#undef MAP_TYPE
#include <onnx/checker.h>
#include <onnx/onnx_pb.h>
#include <onnx/shape_inference/implementation.h>
#pragma pop_macro("MAP_TYPE")

#include "elastic/layers/activation.hpp"
#include "elastic/layers/add.hpp"
#include "elastic/layers/batchnorm.hpp"
#include "elastic/layers/concat.hpp"
#include "elastic/layers/conv.hpp"
#include "elastic/layers/dropout.hpp"
#include "elastic/layers/flatten.hpp"
#include "elastic/layers/layernorm.hpp"
#include "elastic/layers/linear.hpp"
#include "elastic/layers/mul.hpp"
#include "elastic/layers/pool.hpp"
#include "elastic/layers/shuffle.hpp"
#include "elastic/layers/slice.hpp"
#include "elastic/layers/tokens.hpp"
#include "elastic/models/model.hpp"

namespace elastic::onnx_import {

inline constexpr std::string_view kSupportedOps[] = {
    "Add", "AveragePool", "BatchNormalization", "Clip", "Concat", "Constant", "Conv", "Dropout", "Flatten", "Gemm",
    "GlobalAveragePool", "HardSigmoid", "HardSwish", "Identity", "LayerNormalization", "MatMul", "MaxPool", "Mul",
    "Pad", "ReduceMean", "Relu", "Reshape", "Sigmoid", "Slice", "Split", "Transpose",
    // As parts of a LayerNorm (ReduceMean, Sub, Pow, Add, Sqrt, Div, Mul, Add) or a GELU
    // (Div, Erf, Add, Mul, Mul) decomposition:
    "Erf", "Pow", "Sqrt",
    // On integer constants only (the shape arithmetic exporters write), computed at import:
    "Cast", "Div", "Gather", "Shape", "Squeeze", "Sub", "Unsqueeze"};

// Files larger than this are refused before anything is read (protobuf's
// limit for one message is 2 GiB; weights beyond it need ONNX's external
// data, which the importer does not read).
inline constexpr std::uintmax_t kMaxFileBytes = std::uintmax_t(2) << 30;
// Any one tensor (initializer or constant) is refused beyond this many elements.
inline constexpr std::int64_t kMaxTensorElements = std::int64_t(1) << 30;

struct ImportOptions {
  // The classifier layer to replace when ModelOptions::num_classes differs from
  // its outputs; empty: the Gemm whose output is the graph's output.
  std::string head;
};

// What the import found besides the model (for the command line to print).
struct ImportReport {
  std::string head;               // the classifier layer (its name, the prefix of its params)
  bool head_replaced = false;     // re-created with ModelOptions::num_classes outputs
  std::int64_t file_classes = 0;  // the classifier's outputs in the file
  bool dropped_softmax = false;   // a softmax at the output was left out (the loss takes logits)
  std::uint64_t graph_hash = 0;   // of the nodes, their attributes and the initializers' names and shapes
  int nodes = 0;
};

namespace detail {

// A 64-bit FNV-1a hash: stable across runs and machines (profiles store it).
inline std::uint64_t fnv1a(std::string_view bytes, std::uint64_t h = 0xcbf29ce484222325ull) {
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

// A tensor of the file as floats, with its dims.
struct HostTensor {
  Shape shape;
  std::vector<float> values;
};

class Importer {
 public:
  Importer(const std::filesystem::path& path, Context& ctx, const ModelOptions& o, const ImportOptions& io)
      : path_(path), where_("'" + path.string() + "'"), ctx_(ctx), o_(o), io_(io) {}

  Model run(ImportReport& report) {
    read();
    const auto& g = model_.graph();
    for (const auto& t : g.initializer()) consts_[t.name()] = &t;
    for (int i = 0; i < g.node_size(); ++i)
      for (const auto& in : g.node(i).input()) consumers_[in].push_back(i);
    find_head();
    report.graph_hash = hash_graph();
    graph_ = std::make_unique<Graph>(ctx_, o_.precision);
    add_input();
    resolve_shapes();
    for (int i = 0; i < g.node_size(); ++i) add_node(g.node(i), i);
    if (g.output_size() != 1)
      fail("{}: the graph has {} outputs; a classifier has one (the logits)", where_, g.output_size());
    const std::string& out_name = g.output(0).name();
    const ValueId logits = value(out_name, "the graph's output");
    if (shape_of(out_name).size() != 2 && !squeezed_.count(out_name))
      fail("{}: the graph's output '{}' has shape {}, not (batch, classes)", where_, out_name,
           to_string(shape_of(out_name)));
    report.head = head_layer_;
    report.head_replaced = head_replaced_;
    report.file_classes = file_classes_;
    report.dropped_softmax = dropped_softmax_;
    report.nodes = g.node_size();
    Model m = finish_model(fmt::format("onnx:{}:{:016x}", path_.stem().string(), report.graph_hash), std::move(graph_),
                           images_, logits, o_.seed);
    if (head_replaced_) m.head_prefixes = {head_layer_ + "."};
    load_initializers(m);
    return m;
  }

 private:
  // ---- reading ----------------------------------------------------------
  void read() {
    std::error_code ec;
    const auto size = std::filesystem::file_size(path_, ec);
    if (ec) fail("{}: cannot read the ONNX model: {}", where_, ec.message());
    if (size > kMaxFileBytes)
      fail("{}: {} bytes; ONNX models over {} bytes (external data) are not supported", where_, size, kMaxFileBytes);
    std::ifstream in(path_, std::ios::binary);
    std::string bytes(size, '\0');
    if (!in.read(bytes.data(), static_cast<std::streamsize>(size))) fail("{}: cannot read the ONNX model", where_);
    if (!model_.ParseFromString(bytes)) fail("{}: not an ONNX model (its protobuf does not parse)", where_);
    for (const auto& t : model_.graph().initializer()) {
      if (t.data_location() == ::onnx::TensorProto::EXTERNAL)
        fail("{}: tensor '{}' is stored as external data, which is not supported (weights must be inside the file)",
             where_, t.name());
      checked_count(t, t.name());  // every initializer holds what its dims say, so params are bounded by the file
    }
    try {
      ::onnx::checker::check_model(model_);
    } catch (const std::exception& e) {
      fail("{}: ONNX's checker refuses the model: {}", where_, first_line(e.what()));
    }
    // ONNX 1.12's shape inference divides by strides and dilations without
    // checking them: window attributes are checked here first.
    for (const auto& n : model_.graph().node())
      for (const auto& a : n.attribute()) {
        const auto& name = a.name();
        const bool positive = name == "strides" || name == "dilations" || name == "kernel_shape";
        if (positive || name == "pads")
          for (auto v : a.ints())
            if (v < (positive ? 1 : 0))
              fail("{}: node '{}' ({}): {} [{}] must be {}", where_, n.name(), n.op_type(), name,
                   fmt::join(a.ints(), ", "), positive ? "positive" : "non-negative");
        if (name == "group" && a.i() < 1)
          fail("{}: node '{}' ({}): group {} must be positive", where_, n.name(), n.op_type(), a.i());
      }
    for (const auto& op : model_.opset_import())
      if (op.domain().empty() || op.domain() == "ai.onnx") opset_ = op.version();
  }

  static std::string first_line(std::string_view s) { return std::string(s.substr(0, s.find('\n'))); }

  // ---- values and constants --------------------------------------------
  ValueId value(const std::string& name, std::string_view what) const {
    const auto it = values_.find(name);
    if (it == values_.end() && shuffles_.count(name))
      fail(
          "{}: {} '{}' is a 5-D reshape or transpose of an image, which is supported only as a channel shuffle "
          "(reshape, transpose(1, 2), reshape)",
          where_, what, name);
    if (it == values_.end())
      fail(
          "{}: {} '{}' is not computed by any node before it (or is a constant where a tensor of the "
          "batch is expected)",
          where_, what, name);
    return it->second;
  }

  const ::onnx::TensorProto* constant(const std::string& name) const {
    const auto it = consts_.find(name);
    return it == consts_.end() ? nullptr : it->second;
  }

  // The element count of a tensor's dims, checked against the values it
  // stores (before anything is allocated for it).
  std::int64_t checked_count(const ::onnx::TensorProto& t, const std::string& name) const {
    std::int64_t n = 1;
    for (auto d : t.dims()) {
      if (d < 0 || (d > 0 && n > kMaxTensorElements / d))
        fail("{}: tensor '{}' has dims {} (negative or over {} elements)", where_, name, fmt::join(t.dims(), "x"),
             kMaxTensorElements);
      n *= d;
    }
    if (t.data_location() == ::onnx::TensorProto::EXTERNAL)
      fail("{}: tensor '{}' is stored as external data, which is not supported", where_, name);
    const std::string& raw = t.raw_data();
    std::size_t width = 0, listed = 0;
    switch (t.data_type()) {
      case ::onnx::TensorProto::FLOAT:
        width = 4, listed = std::size_t(t.float_data_size());
        break;
      case ::onnx::TensorProto::DOUBLE:
        width = 8, listed = std::size_t(t.double_data_size());
        break;
      case ::onnx::TensorProto::INT64:
        width = 8, listed = std::size_t(t.int64_data_size());
        break;
      case ::onnx::TensorProto::INT32:
        width = 4, listed = std::size_t(t.int32_data_size());
        break;
      default:
        fail("{}: tensor '{}' has ONNX data type {}; float, double, int64 and int32 are supported", where_, name,
             t.data_type());
    }
    const std::size_t stored = raw.empty() ? listed : raw.size() / width;
    if (stored != std::size_t(n) || raw.size() % width)
      fail("{}: tensor '{}' holds {} values for dims {} ({})", where_, name, stored, fmt::join(t.dims(), "x"), n);
    return n;
  }

  // A float, double or int64 tensor as floats (counts checked by checked_count).
  HostTensor to_host(const ::onnx::TensorProto& t, const std::string& name) const {
    HostTensor h;
    const std::int64_t n = checked_count(t, name);
    h.shape.assign(t.dims().begin(), t.dims().end());
    h.values.resize(static_cast<std::size_t>(n));
    const std::string& raw = t.raw_data();
    if (t.data_type() == ::onnx::TensorProto::FLOAT && !raw.empty()) {  // weights: one copy
      std::memcpy(h.values.data(), raw.data(), raw.size());
      return h;
    }
    // Element i of a raw little-endian buffer of T, as a float.
    const auto raw_at = [&]<class T>(std::type_identity<T>, std::int64_t i) {
      T v;
      std::memcpy(&v, raw.data() + i * std::int64_t(sizeof(T)), sizeof(T));
      return static_cast<float>(v);
    };
    for (std::int64_t i = 0; i < n; ++i) {
      const auto k = static_cast<int>(i);
      float& v = h.values[std::size_t(i)];
      switch (t.data_type()) {
        case ::onnx::TensorProto::FLOAT:
          v = raw.empty() ? t.float_data(k) : raw_at(std::type_identity<float>{}, i);
          break;
        case ::onnx::TensorProto::DOUBLE:
          v = raw.empty() ? float(t.double_data(k)) : raw_at(std::type_identity<double>{}, i);
          break;
        case ::onnx::TensorProto::INT64:
          v = raw.empty() ? float(t.int64_data(k)) : raw_at(std::type_identity<std::int64_t>{}, i);
          break;
        default:
          fail("{}: tensor '{}' holds ONNX data type {} where floats are expected", where_, name, t.data_type());
      }
    }
    return h;
  }

  // A scalar constant input (Clip's bounds, Dropout's ratio); `fallback` when
  // the input is absent.
  float scalar_input(const ::onnx::NodeProto& n, int i, float fallback) const {
    if (n.input_size() <= i || n.input(i).empty()) return fallback;
    const auto* t = constant(n.input(i));
    if (!t) fail("{}: node '{}' ({}): input {} '{}' must be a constant", where_, n.name(), n.op_type(), i, n.input(i));
    const HostTensor h = to_host(*t, n.input(i));
    if (h.values.size() != 1)
      fail("{}: node '{}' ({}): input '{}' has {} values, expected one", where_, n.name(), n.op_type(), n.input(i),
           h.values.size());
    return h.values[0];
  }

  // ---- integer constants (shape arithmetic) ---------------------------
  struct IntTensor {
    Shape shape;
    std::vector<std::int64_t> v;
  };

  std::optional<IntTensor> int_const(const std::string& name) const {
    if (const auto it = ints_.find(name); it != ints_.end()) return it->second;
    const auto* t = constant(name);
    if (!t) return std::nullopt;
    const bool i64 = t->data_type() == ::onnx::TensorProto::INT64;
    if (!i64 && t->data_type() != ::onnx::TensorProto::INT32) return std::nullopt;
    IntTensor r;
    std::int64_t n = 1;
    for (auto d : t->dims()) {
      if (d < 0 || d > 4096) fail("{}: integer tensor '{}' has dims {}", where_, name, fmt::join(t->dims(), "x"));
      n *= d;
      r.shape.push_back(d);
    }
    if (n > 4096) fail("{}: integer tensor '{}' has {} values (at most 4096 are read)", where_, name, n);
    const std::string& raw = t->raw_data();
    const std::size_t width = i64 ? 8 : 4;
    const std::size_t got = !raw.empty() ? raw.size() / width
                            : i64        ? std::size_t(t->int64_data_size())
                                         : std::size_t(t->int32_data_size());
    if (got != std::size_t(n) || (!raw.empty() && raw.size() % width))
      fail("{}: tensor '{}' holds {} values for dims {} ({})", where_, name, got, fmt::join(r.shape, "x"), n);
    for (std::size_t i = 0; i < got; ++i) {
      if (raw.empty()) {
        r.v.push_back(i64 ? t->int64_data(int(i)) : t->int32_data(int(i)));
      } else if (i64) {
        std::int64_t v;
        std::memcpy(&v, raw.data() + i * 8, 8);
        r.v.push_back(v);
      } else {
        std::int32_t v;
        std::memcpy(&v, raw.data() + i * 4, 4);
        r.v.push_back(v);
      }
    }
    return r;
  }

  // Computes a node whose inputs are all integer constants (or, for Shape, a
  // value of known shape); false when it is not such a node.
  bool fold(const ::onnx::NodeProto& n) {
    const std::string& op = n.op_type();
    static const std::set<std::string_view> foldable{"Shape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Add",
                                                     "Sub",   "Mul",    "Div",       "Cast",    "Slice"};
    if (!foldable.count(op) || n.output_size() != 1) return false;
    if (op == "Shape") {
      const auto it = shapes_.find(n.input(0));
      if (it == shapes_.end()) return false;  // not inferred (yet)
      // Opset 15's start and end pick dims [start, end), negative ones from
      // the back, both clamped to [0, rank].
      const auto rank = static_cast<std::int64_t>(it->second.size());
      const auto clamped = [rank](std::int64_t v) { return std::clamp(v < 0 ? v + rank : v, std::int64_t{0}, rank); };
      const std::int64_t start = clamped(attr_int(n, "start", 0)), end = clamped(attr_int(n, "end", rank));
      const std::vector<std::int64_t> dims(it->second.begin() + start, it->second.begin() + std::max(start, end));
      ints_[n.output(0)] = IntTensor{{std::int64_t(dims.size())}, dims};
      return true;
    }
    std::vector<IntTensor> in;
    for (const auto& name : n.input()) {
      if (name.empty()) {
        in.push_back({});
        continue;
      }
      auto c = int_const(name);
      if (!c) return false;
      in.push_back(*c);
    }
    IntTensor r;
    const auto scalar_or_vector = [&](const IntTensor& t) {
      if (t.shape.size() > 1) refuse(n, "integer constants of rank above 1 are not supported");
    };
    for (const auto& t : in) scalar_or_vector(t);
    if (op == "Gather") {
      if (attr_int(n, "axis", 0) != 0) refuse(n, "only axis 0 is supported on integer constants");
      r.shape = in[1].shape;
      for (auto i : in[1].v) {
        if (i < 0) i += std::int64_t(in[0].v.size());
        if (i < 0 || i >= std::int64_t(in[0].v.size())) refuse(n, "index out of range");
        r.v.push_back(in[0].v[std::size_t(i)]);
      }
    } else if (op == "Unsqueeze" || op == "Squeeze" || op == "Cast") {
      r.v = in[0].v;
      r.shape = {std::int64_t(r.v.size())};
      if (op == "Squeeze" && r.v.size() == 1) r.shape = {};
    } else if (op == "Concat") {
      for (const auto& t : in) r.v.insert(r.v.end(), t.v.begin(), t.v.end());
      r.shape = {std::int64_t(r.v.size())};
    } else if (op == "Slice") {
      const std::int64_t size = std::int64_t(in[0].v.size());
      if (in.size() > 4 && !in[4].v.empty() && in[4].v[0] != 1) refuse(n, "only step 1 is supported");
      std::int64_t b = in[1].v.at(0), e = in[2].v.at(0);
      if (b < 0) b += size;
      if (e < 0) e += size;
      b = std::clamp<std::int64_t>(b, 0, size);
      e = std::clamp<std::int64_t>(e, 0, size);
      for (std::int64_t i = b; i < e; ++i) r.v.push_back(in[0].v[std::size_t(i)]);
      r.shape = {std::int64_t(r.v.size())};
    } else {  // Add, Sub, Mul, Div with a broadcast scalar
      const auto& a = in[0];
      const auto& b = in[1];
      const std::size_t count = std::max(a.v.size(), b.v.size());
      if ((a.v.size() != count && a.v.size() != 1) || (b.v.size() != count && b.v.size() != 1))
        refuse(n, "integer operands of different sizes");
      for (std::size_t i = 0; i < count; ++i) {
        const std::int64_t x = a.v[a.v.size() == 1 ? 0 : i], y = b.v[b.v.size() == 1 ? 0 : i];
        std::int64_t z = 0;
        const bool overflow = op == "Add"   ? __builtin_add_overflow(x, y, &z)
                              : op == "Sub" ? __builtin_sub_overflow(x, y, &z)
                              : op == "Mul" ? __builtin_mul_overflow(x, y, &z)
                                            : (y == 0 || (y == -1 && x == std::numeric_limits<std::int64_t>::min()));
        if (overflow) refuse(n, fmt::format("{} {} {} overflows or divides by zero", x, op, y));
        r.v.push_back(op == "Div" ? x / y : z);
      }
      r.shape = a.v.size() >= b.v.size() ? a.shape : b.shape;
    }
    ints_[n.output(0)] = std::move(r);
    return true;
  }

  // ---- attributes ------------------------------------------------------
  static const ::onnx::AttributeProto* attr(const ::onnx::NodeProto& n, std::string_view name) {
    for (const auto& a : n.attribute())
      if (a.name() == name) return &a;
    return nullptr;
  }
  static std::int64_t attr_int(const ::onnx::NodeProto& n, std::string_view name, std::int64_t fallback) {
    const auto* a = attr(n, name);
    return a ? a->i() : fallback;
  }
  static float attr_float(const ::onnx::NodeProto& n, std::string_view name, float fallback) {
    const auto* a = attr(n, name);
    return a ? a->f() : fallback;
  }
  static std::vector<std::int64_t> attr_ints(const ::onnx::NodeProto& n, std::string_view name) {
    const auto* a = attr(n, name);
    return a ? std::vector<std::int64_t>(a->ints().begin(), a->ints().end()) : std::vector<std::int64_t>{};
  }

  [[noreturn]] void refuse(const ::onnx::NodeProto& n, std::string_view why) const {
    fail("{}: node '{}' ({}): {}", where_, n.name(), n.op_type(), why);
  }

  // A 2-D window's (h, w) from an ints attribute of 2 values; `fallback` when absent.
  std::pair<std::int64_t, std::int64_t> pair_attr(const ::onnx::NodeProto& n, std::string_view name,
                                                  std::int64_t fallback) const {
    const auto v = attr_ints(n, name);
    if (v.empty()) return {fallback, fallback};
    if (v.size() != 2) refuse(n, fmt::format("{} has {} values; only 2-D windows are supported", name, v.size()));
    return {v[0], v[1]};
  }
  // ONNX pads (top, left, bottom, right) as symmetric (h, w) padding.
  std::pair<std::int64_t, std::int64_t> pads(const ::onnx::NodeProto& n) const {
    const auto* ap = attr(n, "auto_pad");
    if (ap && ap->s() != "NOTSET") refuse(n, fmt::format("auto_pad {} is not supported (explicit pads are)", ap->s()));
    const auto p = attr_ints(n, "pads");
    if (p.empty()) return {0, 0};
    if (p.size() != 4 || p[0] != p[2] || p[1] != p[3])
      refuse(n, fmt::format("pads [{}] are not symmetric (top = bottom, left = right)", fmt::join(p, ", ")));
    return {p[0], p[1]};
  }

  // ---- naming ----------------------------------------------------------
  // A layer with params is named after its weight's initializer (torchvision:
  // "layer1.0.conv1" from "layer1.0.conv1.weight"), so that its params carry
  // the file's names; other nodes after the node's name, else op and index.
  std::string layer_name(const ::onnx::NodeProto& n, int index, const std::string& weight = {}) {
    std::string name;
    if (weight.size() > 7 && weight.ends_with(".weight"))
      name = weight.substr(0, weight.size() - 7);
    else if (!n.name().empty())
      name = n.name();
    else
      name = fmt::format("{}_{}", n.op_type(), index);
    std::string unique = name;
    for (int k = 1; !names_.insert(unique).second; ++k) unique = fmt::format("{}_{}", name, k);
    return unique;
  }

  // Our param `param` takes its values from the file's tensor `tensor`.
  void source(const std::string& param, const std::string& tensor, bool transpose = false) {
    if (!constant(tensor))
      fail("{}: '{}' must be a constant (an initializer) to be the param '{}'", where_, tensor, param);
    sources_[param] = {tensor, transpose};
  }

  const ::onnx::TensorProto& weight(const ::onnx::NodeProto& n, int i) const {
    if (n.input_size() <= i || n.input(i).empty()) refuse(n, fmt::format("input {} is missing", i));
    const auto* t = constant(n.input(i));
    if (!t) refuse(n, fmt::format("input {} '{}' must be an initializer (a weight)", i, n.input(i)));
    return *t;
  }

  // ---- the graph -------------------------------------------------------
  void add_input() {
    const auto& g = model_.graph();
    const ::onnx::ValueInfoProto* in = nullptr;
    for (const auto& v : g.input())
      if (!consts_.count(v.name())) {
        if (in)
          fail("{}: the graph has more than one input ('{}', '{}'); a classifier has one", where_, in->name(),
               v.name());
        in = &v;
      }
    if (!in) fail("{}: the graph has no input", where_);
    const auto& shape = in->type().tensor_type().shape();
    if (shape.dim_size() != 4)
      fail("{}: input '{}' has rank {}; images (N, 3, H, W) are expected", where_, in->name(), shape.dim_size());
    if (shape.dim(1).has_dim_value() && shape.dim(1).dim_value() != 3)
      fail("{}: input '{}' has {} channels; RGB images (3 channels) are expected", where_, in->name(),
           shape.dim(1).dim_value());
    // Batch and image size come from the options, whatever the file fixed or
    // left dynamic: convolutional classifiers take any size. The file's input
    // is given those dims for shape inference.
    images_ = graph_->input("images", {o_.batch, 3, o_.input_size, o_.input_size});
    values_[in->name()] = images_;
    auto* dims = const_cast<::onnx::ValueInfoProto*>(in)->mutable_type()->mutable_tensor_type()->mutable_shape();
    for (int d = 0; d < 4; ++d) dims->mutable_dim(d)->set_dim_value(d == 0 ? o_.batch : d == 1 ? 3 : o_.input_size);
  }

  // ONNX's shape inference from the input's dims: every value's shape, which
  // the layers need before the graph is finalized.
  void infer_shapes() {
    auto* g = model_.mutable_graph();
    g->clear_value_info();
    for (auto& o : *g->mutable_output()) o.mutable_type()->mutable_tensor_type()->clear_shape();
    try {
      // Without ONNX's data propagation: resolve_shapes computes the shape
      // arithmetic itself, one more round for each Reshape a chain depends on.
      // ONNX 1.12's propagation through Shape (opset 15 on) dereferences the
      // type of an input whose inference failed, a crash on a model whose
      // shapes do not add up (the fuzz corpus keeps one).
      ::onnx::shape_inference::InferShapes(model_, ::onnx::OpSchemaRegistry::Instance(),
                                           ::onnx::ShapeInferenceOptions(false, 0, false));
    } catch (const std::exception& e) {
      fail("{}: ONNX's shape inference fails for input {}x3x{}x{}: {}", where_, o_.batch, o_.input_size, o_.input_size,
           first_line(e.what()));
    }
    const auto take = [&](const ::onnx::ValueInfoProto& v) {
      if (!v.type().tensor_type().has_shape()) return;
      Shape s;
      for (const auto& d : v.type().tensor_type().shape().dim()) {
        if (!d.has_dim_value()) return;  // unknown: shape_of refuses where it is needed
        s.push_back(d.dim_value());
      }
      shapes_[v.name()] = s;
    };
    for (const auto& v : g->input()) take(v);
    for (const auto& v : g->value_info()) take(v);
    for (const auto& v : g->output()) take(v);
  }

  // Shape inference, then the integer arithmetic on shapes that exporters
  // write in front of Reshape and Slice (Shape, Gather, Div, Concat, ...):
  // computed here and handed back to the model as constants, so that the next
  // inference knows the shapes behind them. Repeated until nothing changes
  // (each round reaches at least one more Reshape of a chain).
  void resolve_shapes() {
    auto* g = model_.mutable_graph();
    for (int round = 0; round < 256; ++round) {
      infer_shapes();
      ints_.clear();
      for (const auto& n : g->node()) fold(n);
      bool changed = false;
      for (auto& n : *g->mutable_node()) {
        if (ints_.count(n.output(0)) || n.op_type() == "Shape") continue;
        for (int i = 0; i < n.input_size(); ++i) {
          const auto it = ints_.find(n.input(i));
          if (it == ints_.end()) continue;
          const std::string name = "elastic.folded." + n.input(i);
          if (!consts_.count(name)) {
            auto* t = g->add_initializer();
            t->set_name(name);
            t->set_data_type(::onnx::TensorProto::INT64);
            for (auto d : it->second.shape) t->add_dims(d);
            for (auto v : it->second.v) t->add_int64_data(v);
          }
          n.set_input(i, name);
          changed = true;
        }
      }
      // Initializers moved when the list grew: their pointers are taken again.
      consts_.clear();
      for (const auto& t : g->initializer()) consts_[t.name()] = &t;
      for (const auto& n : g->node())
        if (n.op_type() == "Constant")
          if (const auto* a = attr(n, "value"); a && a->has_t()) consts_[n.output(0)] = &a->t();
      if (!changed) return;
    }
    fail("{}: the shape arithmetic does not settle", where_);
  }

  const Shape& shape_of(const std::string& name) const {
    const auto it = shapes_.find(name);
    if (it == shapes_.end()) fail("{}: ONNX's shape inference gives no static shape for '{}'", where_, name);
    return it->second;
  }

  // The classifier: the Gemm whose output is the graph's output, or the one
  // named by ImportOptions::head (by its layer name or node name).
  // The classifier: the Gemm or MatMul (with its bias Add) whose output is the
  // graph's output, or the one named by ImportOptions::head (by its layer name,
  // that of its weight, or its node name).
  void find_head() {
    const auto& g = model_.graph();
    std::map<std::string, const ::onnx::NodeProto*> producer;
    for (const auto& n : g.node())
      for (const auto& o : n.output()) producer[o] = &n;
    std::string result = g.output_size() == 1 ? g.output(0).name() : std::string();
    if (const auto it = producer.find(result);
        it != producer.end() && (it->second->op_type() == "Softmax" || it->second->op_type() == "LogSoftmax"))
      result = it->second->input(0);  // the logits before a final softmax (left out)
    for (int i = 0; i < g.node_size(); ++i) {
      const auto& n = g.node(i);
      if ((n.op_type() != "Gemm" && n.op_type() != "MatMul") || n.input_size() < 2) continue;
      std::string w = n.input(1);
      if (const auto it = producer.find(w); it != producer.end() && it->second->op_type() == "Transpose")
        w = it->second->input(0);  // a MatMul's weight, transposed by the file
      const std::string layer = w.ends_with(".weight") ? w.substr(0, w.size() - 7) : n.name();
      bool output = n.output(0) == result;
      if (const auto* add = only_user(n.output(0), "Add"); n.op_type() == "MatMul" && add)
        output |= add->output(0) == result;
      if (io_.head.empty() ? output : (io_.head == layer || io_.head == n.name())) head_node_ = i;
    }
    if (head_node_ < 0 && !io_.head.empty())
      fail("{}: no Gemm or MatMul named '{}' (--head): name a classifier layer or node of the graph", where_, io_.head);
  }

  void add_node(const ::onnx::NodeProto& n, int index) {
    const std::string& op = n.op_type();
    if (!n.domain().empty() && n.domain() != "ai.onnx")
      refuse(n, fmt::format("operators of domain '{}' are not supported", n.domain()));
    const auto input = [&](int i) { return value(n.input(i), fmt::format("node '{}' input", n.name())); };
    const auto out = [&](ValueId v) { values_[n.output(0)] = v; };
    // An activation that batch norm or add can apply (relu, relu6) goes into the batch
    // norm or add node that produces its input, when nothing else reads that node's output
    // (under its name, or another name for the same value: an Identity's output).
    const auto activation = [&](Activation kind) {
      const ValueId x = input(0);
      const auto& outputs = model_.graph().output();
      const bool only_reader =
          consumers_[n.input(0)].size() == 1 &&
          std::none_of(outputs.begin(), outputs.end(), [&](const auto& o) { return o.name() == n.input(0); }) &&
          std::count_if(values_.begin(), values_.end(), [&](const auto& named) { return named.second == x; }) == 1;
      if (auto* bn = dynamic_cast<BatchNorm2d*>(&graph_->node(x));
          bn && only_reader && !bn->activation() && BatchNorm2d::fuses(kind)) {
        bn->fuse_activation(kind);
        out(x);
        return;
      }
      if (auto* add = dynamic_cast<Add*>(&graph_->node(x));
          add && only_reader && !add->activation() && Add::fuses(kind)) {
        add->fuse_activation(kind);
        out(x);
        return;
      }
      out(graph_->add<Eltwise>({x}, layer_name(n, index), kind));
    };
    if (done_.count(index)) return;  // part of a pattern built at its first node
    if (fold(n)) return;
    if (op == "Split") {
      add_split(n, index);
      return;
    }
    // Extra outputs (batch norm's running statistics in training-mode exports,
    // Dropout's mask) must not be used by any node.
    for (int k = 1; k < n.output_size(); ++k)
      if (!n.output(k).empty()) unused_outputs_.insert(n.output(k));
    for (const auto& in : n.input())
      if (unused_outputs_.count(in)) refuse(n, fmt::format("reads '{}', an output the engine does not compute", in));
    Graph& g = *graph_;
    if (op == "Constant") {
      const auto* a = attr(n, "value");
      if (!a || !a->has_t()) refuse(n, "only tensor constants ('value') are supported");
      consts_[n.output(0)] = &a->t();
    } else if (op == "Conv") {
      const auto& w = weight(n, 1);
      if (w.dims_size() != 4) refuse(n, "only 2-D convolutions are supported");
      const auto [kh, kw] = pair_attr(n, "kernel_shape", -1);
      const auto [sh, sw] = pair_attr(n, "strides", 1);
      const auto [dh, dw] = pair_attr(n, "dilations", 1);
      const auto [ph, pw] = pads(n);
      if (sh != sw || dh != dw || ph != pw)
        refuse(n, "strides, dilations and pads must be the same along height and width");
      const std::int64_t groups = attr_int(n, "group", 1);
      const std::int64_t out_ch = w.dims(0), in_ch = w.dims(1) * groups;
      if ((kh >= 0 && kh != w.dims(2)) || (kw >= 0 && kw != w.dims(3)))
        refuse(n, "kernel_shape differs from the weight's shape");
      const bool bias = n.input_size() > 2 && !n.input(2).empty();
      const std::string name = layer_name(n, index, n.input(1));
      source(name + ".weight", n.input(1));
      if (bias) source(name + ".bias", n.input(2));
      out(g.add<Conv2d>({input(0)}, name,
                        Conv2dOptions{.in_channels = in_ch,
                                      .out_channels = out_ch,
                                      .kernel_h = w.dims(2),
                                      .kernel_w = w.dims(3),
                                      .stride = sh,
                                      .padding = ph,
                                      .dilation = dh,
                                      .groups = groups,
                                      .bias = bias}));
    } else if (op == "BatchNormalization") {
      const auto& scale = weight(n, 1);
      for (int i = 2; i < 5; ++i) weight(n, i);
      if (scale.dims_size() != 1) refuse(n, "scale must be 1-D");
      const std::string name = layer_name(n, index, n.input(1));
      source(name + ".weight", n.input(1));
      source(name + ".bias", n.input(2));
      source(name + ".running_mean", n.input(3));
      source(name + ".running_var", n.input(4));
      // ONNX's momentum weighs the running statistic, torch's the batch's.
      out(g.add<BatchNorm2d>({input(0)}, name,
                             BatchNorm2dOptions{.num_features = scale.dims(0),
                                                .eps = attr_float(n, "epsilon", 1e-5f),
                                                .momentum = 1.0f - attr_float(n, "momentum", 0.9f)}));
    } else if (op == "Sigmoid") {
      // x * sigmoid(x), spread over Sigmoid and Mul, is one SiLU node (at the Mul).
      const auto& users = consumers_[n.output(0)];
      const auto& g_nodes = model_.graph().node();
      if (users.size() == 1 && g_nodes[users[0]].op_type() == "Mul") {
        const auto& m = g_nodes[users[0]];
        if ((m.input(0) == n.input(0) && m.input(1) == n.output(0)) ||
            (m.input(1) == n.input(0) && m.input(0) == n.output(0))) {
          silu_at_[users[0]] = n.input(0);
          return;
        }
      }
      out(g.add<Eltwise>({input(0)}, layer_name(n, index), Activation::sigmoid));
    } else if (op == "HardSigmoid") {
      if (std::abs(attr_float(n, "alpha", 0.2f) - 1.0f / 6) > 1e-6f ||
          std::abs(attr_float(n, "beta", 0.5f) - 0.5f) > 1e-6f)
        refuse(n, "only alpha 1/6 and beta 1/2 (torch's Hardsigmoid) are supported");
      out(g.add<Eltwise>({input(0)}, layer_name(n, index), Activation::hardsigmoid));
    } else if (op == "HardSwish") {
      out(g.add<Eltwise>({input(0)}, layer_name(n, index), Activation::hardswish));
    } else if (op == "Mul") {
      if (const auto it = silu_at_.find(index); it != silu_at_.end()) {
        out(g.add<Eltwise>({value(it->second, "SiLU input")}, layer_name(n, index), Activation::silu));
        return;
      }
      // A constant (C, 1, 1) operand is a trained per-channel scale (ConvNeXt's layer_scale).
      for (int k = 0; k < 2; ++k)
        if (const auto* c = constant(n.input(k))) {
          const Shape& x = shape_of(n.input(1 - k));
          if (c->dims_size() != 3 || c->dims(1) != 1 || c->dims(2) != 1 || x.size() != 4 || x[1] != c->dims(0))
            refuse(n, "a constant operand must be a per-channel scale (C, 1, 1) of an image (N, C, H, W)");
          source(n.input(k), n.input(k));
          out(g.add<ChannelScale>({input(1 - k)}, layer_name(n, index), n.input(k), c->dims(0)));
          return;
        }
      // The image first, a (N, C, 1, 1) gate second.
      int big = 0;
      if (shape_of(n.input(0)) != shape_of(n.input(1)) && numel(shape_of(n.input(1))) > numel(shape_of(n.input(0))))
        big = 1;
      out(g.add<Mul>({input(big), input(1 - big)}, layer_name(n, index)));
    } else if (op == "Concat") {
      const std::int64_t rank = static_cast<std::int64_t>(shape_of(n.output(0)).size());
      std::int64_t axis = attr_int(n, "axis", 1);
      if (axis < 0) axis += rank;
      std::vector<ValueId> ins;
      for (int i = 0; i < n.input_size(); ++i) ins.push_back(input(i));
      out(g.add<Concat>(ins, layer_name(n, index), static_cast<int>(axis)));
    } else if (op == "Reshape") {
      add_reshape(n, index);
    } else if (op == "Transpose") {
      add_transpose(n, index);
    } else if (op == "Slice") {
      const Shape& x = shape_of(n.input(0));
      const auto starts = int_const(n.input(1)), ends = int_const(n.input(2));
      const auto axes = n.input_size() > 3 && !n.input(3).empty() ? int_const(n.input(3)) : std::optional<IntTensor>();
      const auto steps = n.input_size() > 4 && !n.input(4).empty() ? int_const(n.input(4)) : std::optional<IntTensor>();
      if (!starts || !ends || (n.input_size() > 3 && !n.input(3).empty() && !axes) ||
          (n.input_size() > 4 && !n.input(4).empty() && !steps))
        refuse(n, "starts, ends, axes and steps must be constants");
      if (starts->v.size() != 1 || (steps && steps->v != std::vector<std::int64_t>{1}))
        refuse(n, "only a slice along one axis with step 1 is supported");
      std::int64_t axis = axes ? axes->v.at(0) : 0;
      if (axis < 0) axis += std::int64_t(x.size());
      if (axis < 0 || axis >= std::int64_t(x.size()))
        refuse(n, fmt::format("axis {} is outside the input's {} dims", axes ? axes->v.at(0) : 0, x.size()));
      const std::int64_t size = x[std::size_t(axis)];
      std::int64_t b = starts->v[0], e = ends->v.at(0);
      if (b < 0) b += size;
      if (e < 0) e += size;
      b = std::clamp<std::int64_t>(b, 0, size);
      e = std::clamp<std::int64_t>(e, 0, size);
      out(g.add<Slice>({input(0)}, layer_name(n, index), static_cast<int>(axis), b, e));
    } else if (op == "ReduceMean") {
      auto axes = attr_ints(n, "axes");
      const Shape& x = shape_of(n.input(0));
      for (auto& a : axes)
        if (a < 0) a += std::int64_t(x.size());
      if (axes == std::vector<std::int64_t>{std::int64_t(x.size()) - 1}) {
        add_layernorm(n, index);
        return;
      }
      if (x.size() != 4 || axes != std::vector<std::int64_t>{2, 3})
        refuse(n, "only the mean over height and width of an image (axes [2, 3]) is supported");
      if (attr_int(n, "keepdims", 1) == 0)
        out(g.add<GlobalAvgPool>({input(0)}, layer_name(n, index)));
      else
        add_global_pool(n, index);
    } else if (op == "Div") {
      add_gelu(n, index);
    } else if (op == "MatMul") {
      add_matmul(n, index);
    } else if (op == "LayerNormalization") {
      const Shape& x = shape_of(n.input(0));
      std::int64_t axis = attr_int(n, "axis", -1);
      if (axis < 0) axis += std::int64_t(x.size());
      if (axis != std::int64_t(x.size()) - 1) refuse(n, "only a LayerNorm over the last axis is supported");
      const auto& w = weight(n, 1);
      if (w.dims_size() != 1 || n.input_size() < 3 || n.input(2).empty())
        refuse(n, "a 1-D scale and a bias are required");
      const std::string name = layer_name(n, index, n.input(1));
      source(name + ".weight", n.input(1));
      source(name + ".bias", n.input(2));
      out(g.add<LayerNorm>({input(0)}, name,
                           LayerNormOptions{.normalized_shape = w.dims(0), .eps = attr_float(n, "epsilon", 1e-5f)}));
      if (tokens_.count(n.input(0))) tokens_.insert(n.output(0));
    } else if (op == "Softmax" || op == "LogSoftmax") {
      // A classifier exported with its probabilities: the loss takes logits,
      // so the final softmax is left out.
      const auto& g_out = model_.graph().output();
      const std::int64_t rank = std::int64_t(shape_of(n.input(0)).size());
      std::int64_t axis = attr_int(n, "axis", -1);
      if (axis < 0) axis += rank;
      if (g_out.size() != 1 || g_out[0].name() != n.output(0) || axis != rank - 1)
        refuse(n, "a softmax is supported only over the classes at the graph's output, where it is left out");
      out(input(0));
      dropped_softmax_ = true;
    } else if (op == "Relu") {
      activation(Activation::relu);
    } else if (op == "Clip") {
      float lo, hi;
      if (opset_ < 11) {
        lo = attr_float(n, "min", -std::numeric_limits<float>::max());
        hi = attr_float(n, "max", std::numeric_limits<float>::max());
      } else {
        lo = scalar_input(n, 1, -std::numeric_limits<float>::infinity());
        hi = scalar_input(n, 2, std::numeric_limits<float>::infinity());
      }
      if (lo == 0.0f && hi == 6.0f)
        activation(Activation::relu6);
      else if (lo == 0.0f && hi >= std::numeric_limits<float>::max())
        activation(Activation::relu);
      else
        refuse(n, fmt::format("Clip to [{}, {}] is not supported (only [0, 6] and [0, inf))", lo, hi));
    } else if (op == "Add") {
      // The image first, a (N, C, 1, 1) term broadcast over it second (the layer checks the shapes).
      const int big = numel(shape_of(n.input(1))) > numel(shape_of(n.input(0))) ? 1 : 0;
      out(g.add<Add>({input(big), input(1 - big)}, layer_name(n, index)));
    } else if (op == "MaxPool" || op == "AveragePool") {
      const auto [kh, kw] = pair_attr(n, "kernel_shape", -1);
      const auto [sh, sw] = pair_attr(n, "strides", 1);
      const auto [ph, pw] = pads(n);
      if (kh < 1) refuse(n, "kernel_shape is missing");
      if (attr_int(n, "ceil_mode", 0) != 0) refuse(n, "ceil_mode 1 is not supported");
      if (op == "MaxPool" && (n.output_size() > 1 && !n.output(1).empty()))
        refuse(n, "the Indices output is not supported");
      const auto dil = attr_ints(n, "dilations");
      if (std::any_of(dil.begin(), dil.end(), [](auto d) { return d != 1; })) refuse(n, "dilations are not supported");
      if (op == "AveragePool" && (ph || pw) && attr_int(n, "count_include_pad", 0) != 0)
        refuse(n, "count_include_pad 1 with padding is not supported");
      const PoolOptions po{
          .kernel_h = kh, .kernel_w = kw, .stride_h = sh, .stride_w = sw, .padding_h = ph, .padding_w = pw};
      if (op == "MaxPool")
        out(g.add<MaxPool2d>({input(0)}, layer_name(n, index), po));
      else
        out(g.add<AvgPool2d>({input(0)}, layer_name(n, index), po));
    } else if (op == "GlobalAveragePool") {
      add_global_pool(n, index);
    } else if (op == "Flatten") {
      if (attr_int(n, "axis", 1) != 1) refuse(n, "only axis 1 is supported");
      const ValueId x = input(0);
      out(squeezed_.count(n.input(0)) || shape_of(n.input(0)).size() == 2 ? x
                                                                          : g.add<Flatten>({x}, layer_name(n, index)));
    } else if (op == "Gemm") {
      add_gemm(n, index, input(0));
    } else if (op == "Dropout") {
      const float ratio = opset_ < 12 ? attr_float(n, "ratio", 0.5f) : scalar_input(n, 1, 0.5f);
      out(g.add<Dropout>({input(0)}, layer_name(n, index), ratio, o_.seed));
      if (squeezed_.count(n.input(0))) squeezed_.insert(n.output(0));
    } else if (op == "Pad") {
      // PyTorch writes a zero Pad before some average pools: the identity.
      std::vector<float> amounts;
      if (opset_ < 11) {
        for (auto v : attr_ints(n, "pads")) amounts.push_back(float(v));
      } else {
        const auto* t = n.input_size() > 1 ? constant(n.input(1)) : nullptr;
        if (!t) refuse(n, "pads must be a constant");
        amounts = to_host(*t, n.input(1)).values;
      }
      if (std::any_of(amounts.begin(), amounts.end(), [](float v) { return v != 0; }))
        refuse(n, "only all-zero padding (the identity) is supported");
      out(input(0));
      if (squeezed_.count(n.input(0))) squeezed_.insert(n.output(0));
    } else if (op == "Cast" && constant(n.input(0)) && attr_int(n, "to", 0) == constant(n.input(0))->data_type()) {
      consts_[n.output(0)] = constant(n.input(0));  // a cast of a constant to its own type
    } else if (op == "Identity" && constant(n.input(0))) {
      consts_[n.output(0)] = constant(n.input(0));  // PyTorch shares equal initializers this way
    } else if (op == "Identity") {
      out(input(0));
      if (squeezed_.count(n.input(0))) squeezed_.insert(n.output(0));
    } else {
      fail("{}: node '{}' has operator {}, which is not supported; supported: {}", where_, n.name(), op,
           fmt::join(kSupportedOps, ", "));
    }
  }

  // A mean over the whole image, ONNX's output (N, C, 1, 1). Feeding only
  // Flatten or Gemm (a classifier's pooling) it is the engine's global
  // pooling, (N, C); elsewhere (squeeze-and-excitation) an average pool over
  // the whole image.
  void add_global_pool(const ::onnx::NodeProto& n, int index) {
    const auto& users = consumers_[n.output(0)];
    const auto& g_nodes = model_.graph().node();
    const bool to_classifier = std::all_of(users.begin(), users.end(), [&](int u) {
      return g_nodes[u].op_type() == "Flatten" || g_nodes[u].op_type() == "Gemm";
    });
    const ValueId x = value(n.input(0), fmt::format("node '{}' input", n.name()));
    if (to_classifier) {
      values_[n.output(0)] = graph_->add<GlobalAvgPool>({x}, layer_name(n, index));
      squeezed_.insert(n.output(0));
      return;
    }
    const Shape& s = shape_of(n.input(0));
    if (s.size() != 4) refuse(n, "only images (N, C, H, W) are supported");
    values_[n.output(0)] =
        graph_->add<AvgPool2d>({x}, layer_name(n, index), PoolOptions{.kernel_h = s[2], .kernel_w = s[3]});
  }

  // Reshape: the identity when the shape does not change, a Flatten to
  // (N, rest), or the first and last steps of a channel shuffle.
  void add_reshape(const ::onnx::NodeProto& n, int index) {
    const auto target = int_const(n.input(1));
    if (!target) refuse(n, "the target shape must be a constant (or computed from shapes)");
    const bool from_shuffle = shuffles_.count(n.input(0)) > 0;
    const Shape& x = shape_of(n.input(0));
    // The target with 0 (copy the input's dim) and -1 (the rest) resolved.
    Shape t = target->v;
    std::int64_t known = 1, infer = -1;
    for (std::size_t d = 0; d < t.size(); ++d) {
      if (t[d] == 0 && attr_int(n, "allowzero", 0) == 0) {
        if (d >= x.size()) refuse(n, fmt::format("target dim {} copies a dim that {} does not have", d, to_string(x)));
        t[d] = x[d];
      }
      if (t[d] == -1 && infer < 0)
        infer = std::int64_t(d);
      else if (t[d] < 0 || __builtin_mul_overflow(known, t[d], &known))
        refuse(n, fmt::format("the target shape {} is not a shape", fmt::join(target->v, "x")));
    }
    if (infer >= 0) t[std::size_t(infer)] = known ? numel(x) / known : 0;
    if (numel(t) != numel(x)) refuse(n, fmt::format("reshapes {} into {}", to_string(x), fmt::join(target->v, "x")));
    if (from_shuffle) {
      const auto& sh = shuffles_.at(n.input(0));
      const Shape& in = shape_of(sh.input);
      if (!sh.transposed || t != in) refuse(n, "a 5-D reshape is supported only as a channel shuffle");
      values_[n.output(0)] =
          graph_->add<ChannelShuffle>({value(sh.input, "channel shuffle input")}, layer_name(n, index), sh.groups);
      return;
    }
    const ValueId v = value(n.input(0), fmt::format("node '{}' input", n.name()));
    if (t == x || (squeezed_.count(n.input(0)) && t.size() == 2 && t[0] == x[0] && t[1] == x[1])) {
      values_[n.output(0)] = v;
      if (squeezed_.count(n.input(0))) squeezed_.insert(n.output(0));
    } else if (t.size() == 2 && t[0] == x[0]) {
      values_[n.output(0)] = graph_->add<Flatten>({v}, layer_name(n, index));
    } else if (x.size() == 4 && t.size() == 5 && t[0] == x[0] && t[1] * t[2] == x[1] && t[3] == x[2] && t[4] == x[3]) {
      shuffles_[n.output(0)] = {n.input(0), t[1], false};
    } else {
      refuse(n, fmt::format("reshapes {} into {}; supported: flattening to (N, rest) and channel shuffles",
                            to_string(x), to_string(t)));
    }
  }

  // The node reading `name`, when it is the only one and has operator `op`.
  const ::onnx::NodeProto* only_user(const std::string& name, std::string_view op, int* index = nullptr) {
    const auto& users = consumers_[name];
    if (users.size() != 1) return nullptr;
    const auto& u = model_.graph().node(users[0]);
    if (u.op_type() != op) return nullptr;
    if (index) *index = users[0];
    return &u;
  }
  // The value of a scalar float constant input, if it is one.
  std::optional<float> scalar_const(const std::string& name) const {
    const auto* t = constant(name);
    if (!t) return std::nullopt;
    const HostTensor h = to_host(*t, name);
    if (h.values.size() != 1) return std::nullopt;
    return h.values[0];
  }
  // The input of a two-input node other than `name`.
  static const std::string& other(const ::onnx::NodeProto& n, const std::string& name) {
    return n.input(0) == name ? n.input(1) : n.input(0);
  }

  // Transpose: of a 2-D weight (kept for the MatMul reading it), an image into
  // channels-last tokens (0, 2, 3, 1) and back (0, 3, 1, 2), or the middle of
  // a channel shuffle.
  void add_transpose(const ::onnx::NodeProto& n, int index) {
    const auto perm = attr_ints(n, "perm");
    if (const auto* c = constant(n.input(0))) {
      if (c->dims_size() != 2 || perm != std::vector<std::int64_t>{1, 0})
        refuse(n, "only 2-D constants are transposed");
      transposed_consts_[n.output(0)] = n.input(0);
      return;
    }
    if (const auto it = shuffles_.find(n.input(0)); it != shuffles_.end()) {
      if (it->second.transposed || perm != std::vector<std::int64_t>{0, 2, 1, 3, 4})
        refuse(n, fmt::format("Transpose with perm [{}] is not part of a channel shuffle", fmt::join(perm, ", ")));
      shuffles_[n.output(0)] = {it->second.input, it->second.groups, true};
      return;
    }
    const Shape& x = shape_of(n.input(0));
    const ValueId v = value(n.input(0), fmt::format("node '{}' input", n.name()));
    if (x.size() == 4 && perm == std::vector<std::int64_t>{0, 2, 3, 1} && !tokens_.count(n.input(0))) {
      values_[n.output(0)] = graph_->add<PatchTokens>({v}, layer_name(n, index));
      tokens_.insert(n.output(0));
    } else if (x.size() == 4 && perm == std::vector<std::int64_t>{0, 3, 1, 2} && tokens_.count(n.input(0))) {
      values_[n.output(0)] = graph_->add<TokenImage>({v}, layer_name(n, index), x[1], x[2]);
    } else {
      refuse(n, fmt::format("Transpose with perm [{}] is not supported (an image to channels-last and back, "
                            "a 2-D weight, or a channel shuffle are)",
                            fmt::join(perm, ", ")));
    }
  }

  // LayerNorm over the last axis as exporters decompose it:
  // m = ReduceMean(x), d = x - m, v = ReduceMean(d ^ 2), y = d / Sqrt(v + eps),
  // out = y * weight + bias: one LayerNorm layer named after its weight.
  void add_layernorm(const ::onnx::NodeProto& n, int index) {
    const std::string& x = n.input(0);
    const auto no = [&](std::string_view what) {
      refuse(n, fmt::format("a mean over the last axis is supported as part of a LayerNorm ({})", what));
    };
    int i_sub = -1, i_var = -1, i_eps = -1, i_sqrt = -1, i_div = -1, i_mul = -1, i_add = -1;
    const auto* sub = only_user(n.output(0), "Sub", &i_sub);
    if (!sub || sub->input(0) != x || sub->input(1) != n.output(0)) no("x - mean");
    const auto& users = consumers_[sub->output(0)];
    if (users.size() != 2) no("x - mean used by the square and the division");
    const auto& g_nodes = model_.graph().node();
    const int i_pow = g_nodes[users[0]].op_type() == "Pow" ? users[0] : users[1];
    const auto& pow = g_nodes[i_pow];
    if (pow.op_type() != "Pow" || scalar_const(pow.input(1)) != 2.0f) no("(x - mean) ^ 2");
    const auto* var = only_user(pow.output(0), "ReduceMean", &i_var);
    if (!var || attr_ints(*var, "axes") != attr_ints(n, "axes")) no("the variance");
    const auto* eps_add = only_user(var->output(0), "Add", &i_eps);
    const auto eps = eps_add ? scalar_const(other(*eps_add, var->output(0))) : std::nullopt;
    if (!eps) no("variance + eps");
    const auto* sqrt = only_user(eps_add->output(0), "Sqrt", &i_sqrt);
    if (!sqrt) no("the square root");
    const auto* div = only_user(sqrt->output(0), "Div", &i_div);
    if (!div || div->input(0) != sub->output(0)) no("(x - mean) / std");
    const auto* mul = only_user(div->output(0), "Mul", &i_mul);
    const auto* w = mul ? constant(other(*mul, div->output(0))) : nullptr;
    if (!w || w->dims_size() != 1) no("times a 1-D weight");
    const auto* add = only_user(mul->output(0), "Add", &i_add);
    const auto* b = add ? constant(other(*add, mul->output(0))) : nullptr;
    if (!b || b->dims_size() != 1) no("plus a 1-D bias");
    // Named by the inputs, not the tensors: exporters share equal tensors between layers.
    const std::string& w_name = other(*mul, div->output(0));
    const std::string name = layer_name(n, index, w_name);
    source(name + ".weight", w_name);
    source(name + ".bias", other(*add, mul->output(0)));
    values_[add->output(0)] = graph_->add<LayerNorm>({value(x, "LayerNorm input")}, name,
                                                     LayerNormOptions{.normalized_shape = w->dims(0), .eps = *eps});
    if (tokens_.count(x)) tokens_.insert(add->output(0));
    done_.insert({i_sub, i_pow, i_var, i_eps, i_sqrt, i_div, i_mul, i_add});
  }

  // GELU as exporters decompose it: x * (Erf(x / sqrt 2) + 1) * 0.5.
  void add_gelu(const ::onnx::NodeProto& n, int index) {
    const std::string& x = n.input(0);
    const auto no = [&] { refuse(n, "Div is supported on integer constants and as part of a GELU"); };
    const auto root2 = scalar_const(n.input(1));
    if (!root2 || std::abs(*root2 - std::sqrt(2.0f)) > 1e-5f) no();
    int i_erf = -1, i_add = -1, i_mul = -1, i_half = -1;
    const auto* erf = only_user(n.output(0), "Erf", &i_erf);
    const auto* add = erf ? only_user(erf->output(0), "Add", &i_add) : nullptr;
    if (!add || scalar_const(other(*add, erf->output(0))) != 1.0f) no();
    const auto* mul = only_user(add->output(0), "Mul", &i_mul);
    if (!mul || other(*mul, add->output(0)) != x) no();
    const auto* half = only_user(mul->output(0), "Mul", &i_half);
    if (!half || scalar_const(other(*half, mul->output(0))) != 0.5f) no();
    values_[half->output(0)] = graph_->add<Eltwise>({value(x, "GELU input")}, layer_name(n, index), Activation::gelu);
    if (tokens_.count(x)) tokens_.insert(half->output(0));
    done_.insert({i_erf, i_add, i_mul, i_half});
  }

  // MatMul by a constant 2-D weight as a Linear layer over the last axis; an
  // Add of a 1-D constant right after it is the layer's bias.
  void add_matmul(const ::onnx::NodeProto& n, int index) {
    std::string weight;
    bool torch_layout = false;  // (out, in): the file transposes it with a Transpose node
    if (const auto it = transposed_consts_.find(n.input(1)); it != transposed_consts_.end()) {
      weight = it->second;
      torch_layout = true;
    } else if (const auto* c = constant(n.input(1)); c && c->dims_size() == 2) {
      weight = n.input(1);
    } else {
      refuse(n, "only a product with a constant 2-D weight is supported");
    }
    const auto* w = constant(weight);
    const std::int64_t out_f = torch_layout ? w->dims(0) : w->dims(1), in_f = torch_layout ? w->dims(1) : w->dims(0);
    const Shape& x = shape_of(n.input(0));
    if (x.empty() || x.back() != in_f)
      refuse(n, fmt::format("input shape {} does not fit a weight of {} inputs", to_string(x), in_f));
    std::string result = n.output(0), bias;
    int i_add = -1;
    if (const auto* add = only_user(n.output(0), "Add", &i_add)) {
      const auto* b = constant(other(*add, n.output(0)));
      if (b && b->dims_size() == 1 && b->dims(0) == out_f) {
        bias = b->name();
        result = add->output(0);
        done_.insert(i_add);
      }
    }
    const std::string name = layer_name(n, index, weight);
    std::int64_t classes = out_f;
    bool replaced = false;
    if (index == head_node_) {
      head_layer_ = name;
      file_classes_ = out_f;
      replaced = head_replaced_ = o_.num_classes != out_f;
      if (replaced) classes = o_.num_classes;
    }
    if (!replaced) {
      source(name + ".weight", weight, !torch_layout);
      if (!bias.empty()) source(name + ".bias", bias);
    }
    values_[result] = graph_->add<Linear>(
        {value(n.input(0), "MatMul input")}, name,
        LinearOptions{.in_features = in_f, .out_features = classes, .bias = !bias.empty() || replaced});
    if (tokens_.count(n.input(0))) tokens_.insert(result);
  }

  // Split along one axis: one Slice layer per output.
  void add_split(const ::onnx::NodeProto& n, int index) {
    const Shape& x = shape_of(n.input(0));
    std::int64_t axis = attr_int(n, "axis", 0);
    if (axis < 0) axis += std::int64_t(x.size());
    if (axis < 0 || axis >= std::int64_t(x.size())) refuse(n, "axis out of range");
    std::vector<std::int64_t> sizes = attr_ints(n, "split");
    if (n.input_size() > 1 && !n.input(1).empty()) {
      const auto c = int_const(n.input(1));
      if (!c) refuse(n, "split sizes must be constants");
      sizes = c->v;
    }
    const std::int64_t total = x[std::size_t(axis)], parts = n.output_size();
    if (sizes.empty()) {
      if (total % parts) refuse(n, fmt::format("{} does not split into {} equal parts", total, parts));
      sizes.assign(std::size_t(parts), total / parts);
    }
    if (std::int64_t(sizes.size()) != parts) refuse(n, "split sizes and outputs differ in number");
    const ValueId v = value(n.input(0), fmt::format("node '{}' input", n.name()));
    std::int64_t begin = 0;
    for (int k = 0; k < n.output_size(); ++k) {
      const std::string name = layer_name(n, index) + fmt::format("_{}", k);
      values_[n.output(k)] =
          graph_->add<Slice>({v}, name, static_cast<int>(axis), begin, begin + sizes[std::size_t(k)]);
      begin += sizes[std::size_t(k)];
    }
    if (begin != total) refuse(n, fmt::format("split sizes add up to {}, not {}", begin, total));
  }

  // Gemm as a Linear layer: Y = X W^T + b (transB 1, torch's layout) or X W + b
  // (transB 0: the weight is transposed when loaded).
  void add_gemm(const ::onnx::NodeProto& n, int index, ValueId x) {
    const auto& w = weight(n, 1);
    if (attr_int(n, "transA", 0) != 0) refuse(n, "transA 1 is not supported");
    if (attr_float(n, "alpha", 1.0f) != 1.0f || attr_float(n, "beta", 1.0f) != 1.0f)
      refuse(n, "alpha and beta other than 1 are not supported");
    if (w.dims_size() != 2) refuse(n, "the weight must be 2-D");
    const bool trans_b = attr_int(n, "transB", 0) != 0;
    const std::int64_t out_f = trans_b ? w.dims(0) : w.dims(1), in_f = trans_b ? w.dims(1) : w.dims(0);
    const bool bias = n.input_size() > 2 && !n.input(2).empty();
    Shape xs = shape_of(n.input(0));
    if (squeezed_.count(n.input(0))) xs.resize(2);
    if (xs.size() != 2 || xs[1] != in_f)
      refuse(n, fmt::format("input shape {} does not fit a weight of {} inputs", to_string(xs), in_f));
    const std::string name = layer_name(n, index, n.input(1));
    std::int64_t classes = out_f;
    if (index == head_node_) {
      head_layer_ = name;
      file_classes_ = out_f;
      if (o_.num_classes != out_f) {
        head_replaced_ = true;
        classes = o_.num_classes;
      }
    }
    if (!head_replaced_ || index != head_node_) {
      source(name + ".weight", n.input(1), !trans_b);
      if (bias) source(name + ".bias", n.input(2));
    }
    values_[n.output(0)] = graph_->add<Linear>(
        {x}, name, LinearOptions{.in_features = in_f, .out_features = classes, .bias = bias || head_replaced_});
  }

  // ---- weights ---------------------------------------------------------
  void load_initializers(Model& m) {
    ParamStore& store = m.params();
    const auto fill = [&](const std::string& name, const Shape& shape, std::span<float> dst) {
      const auto it = sources_.find(name);
      if (it == sources_.end()) return;
      const auto& [tensor, transpose] = it->second;
      const HostTensor h = to_host(*constant(tensor), tensor);
      Shape want = shape;
      if (transpose) std::swap(want[0], want[1]);
      if (numel(h.shape) != numel(want) || (h.shape != want && !(h.shape.size() == 1 && want.size() == 1)))
        fail("{}: tensor '{}' has shape {}; layer param '{}' needs {}", where_, tensor, to_string(h.shape), name,
             to_string(want));
      if (!transpose) {
        std::copy(h.values.begin(), h.values.end(), dst.begin());
      } else {
        const std::int64_t rows = want[0], cols = want[1];  // the file's (in, out) into our (out, in)
        for (std::int64_t r = 0; r < rows; ++r)
          for (std::int64_t c = 0; c < cols; ++c) dst[std::size_t(c * rows + r)] = h.values[std::size_t(r * cols + c)];
      }
      ++loaded_;
    };
    for (auto& p : store.params()) fill(p.name, p.shape, p.values());
    for (auto& b : store.buffers()) fill(b.name, b.shape, b.values());
  }

  std::uint64_t hash_graph() const {
    const auto& g = model_.graph();
    std::uint64_t h = fnv1a(std::to_string(opset_));
    for (const auto& n : g.node()) h = fnv1a(n.SerializeAsString(), h);
    for (const auto& t : g.initializer()) {
      h = fnv1a(t.name(), h);
      for (auto d : t.dims()) h = fnv1a(std::to_string(d) + ",", h);
    }
    return h;
  }

  std::filesystem::path path_;
  std::string where_;
  Context& ctx_;
  ModelOptions o_;
  ImportOptions io_;
  ::onnx::ModelProto model_;
  std::int64_t opset_ = 0;
  std::unique_ptr<Graph> graph_;
  ValueId images_ = -1;
  std::map<std::string, ValueId> values_;
  std::map<std::string, const ::onnx::TensorProto*> consts_;
  std::set<std::string> names_, unused_outputs_;
  std::map<std::string, Shape> shapes_;                // ONNX's inferred shapes
  std::set<std::string> squeezed_;                     // ONNX (N, C, 1, 1) values the engine holds as (N, C)
  std::map<std::string, std::vector<int>> consumers_;  // value -> the nodes reading it
  std::map<std::string, IntTensor> ints_;              // integer constants computed at import
  struct PendingShuffle {
    std::string input;  // the 4-D image being shuffled
    std::int64_t groups;
    bool transposed;  // after its Transpose
  };
  std::map<std::string, PendingShuffle> shuffles_;  // 5-D steps of channel shuffles
  std::map<int, std::string> silu_at_;
  std::set<int> done_;                                    // nodes built as parts of a pattern
  std::set<std::string> tokens_;                          // ONNX (N, H, W, C) values held as (N, H*W, C) tokens
  std::map<std::string, std::string> transposed_consts_;  // Transpose output -> the 2-D constant it transposes // Mul
                                                          // node -> the input of its fused SiLU
  std::map<std::string, std::pair<std::string, bool>> sources_;  // param -> (file tensor, transposed)
  bool dropped_softmax_ = false;
  int head_node_ = -1;
  std::string head_layer_;
  bool head_replaced_ = false;
  std::int64_t file_classes_ = 0;
  int loaded_ = 0;
};

}  // namespace detail

// Builds the model of the ONNX file at `path` for ModelOptions' batch, input
// size, precision and classes (the classifier re-created when they differ
// from the file's); the file's initializers are loaded into its params and
// batch-norm buffers, except a re-created classifier's.
inline Model import_model(const std::filesystem::path& path, Context& ctx, const ModelOptions& o,
                          const ImportOptions& io = {}, ImportReport* report = nullptr) {
  if (o.num_classes < 1) usage_fail("--num_classes must be at least 1, got {}", o.num_classes);
  if (o.batch < 1) usage_fail("--batch_size must be at least 1, got {}", o.batch);
  ImportReport r;
  std::optional<Model> built;
  try {
    built.emplace(detail::Importer(path, ctx, o, io).run(r));
  } catch (const dnnl::error& e) {  // a layer configuration the kernels do not take
    fail("'{}': oneDNN refuses a layer of the model: {}", path.string(), e.what());
  } catch (const std::out_of_range& e) {  // an axis, dim or list index the file gets wrong
    fail("'{}': the model refers to something it does not have ({})", path.string(), e.what());
  }
  Model m = std::move(*built);
  if (report) *report = r;
  return m;
}

}  // namespace elastic::onnx_import
