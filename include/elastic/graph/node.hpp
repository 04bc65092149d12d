// The Node interface: one op of the graph with three separately callable
// passes (forward, backward_data, backward_weights) so that each can be skipped
// by a BackwardPlan and timed on its own by the profiler.
//
// Life cycle: the graph constructs a node, calls declare() so it can add its
// params, then setup() once with its input descriptors: setup infers the output
// descriptor (set_output) and creates every oneDNN primitive. Before running,
// the graph binds buffers to the node's memory objects; forward/backward then
// only execute primitives on them. Argument maps built in setup stay valid
// because binding changes handles, never the memory objects.
#pragma once

#include <algorithm>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/context.hpp"
#include "elastic/core/error.hpp"
#include "elastic/core/host_math.hpp"
#include "elastic/core/precision.hpp"
#include "elastic/core/tensor.hpp"
#include "elastic/graph/param.hpp"
#include "elastic/graph/weight_reorder.hpp"

namespace elastic {

using Args = std::unordered_map<int, dnnl::memory>;

// Every primitive is created with a user-managed scratchpad: in oneDNN's default
// mode the library allocates and frees scratch memory inside every execution.
inline dnnl::primitive_attr user_scratchpad(dnnl::primitive_attr attr = {}) {
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  return attr;
}

namespace detail {
// One scratch buffer shared by all primitives: they run one at a time on one
// stream, so they can all use the same bytes. It only grows; a primitive keeps
// alive the buffer it was given, so growing never invalidates an earlier one.
// (Not for graphs executed concurrently from several threads.)
inline std::shared_ptr<float[]> shared_scratchpad(std::size_t bytes) {
  static std::mutex mutex;
  static std::shared_ptr<float[]> buffer;
  static std::size_t size = 0;
  std::lock_guard lock(mutex);
  if (bytes > size) {
    size = std::max(bytes, 2 * size);
    buffer = aligned_floats(static_cast<std::int64_t>(size / sizeof(float) + 1));
  }
  return buffer;
}
}  // namespace detail

// A primitive with its arguments bound once, in setup. Running it goes through
// oneDNN's C API with the prebuilt argument array, so the call itself builds no
// container (the C++ execute() copies its map into a new vector every call).
class Call {
 public:
  Call() = default;
  Call(dnnl::primitive primitive, Args args) : primitive_(std::move(primitive)), keep_(std::move(args)) {
    attach_scratchpad();
    for (const auto& [key, mem] : keep_) c_args_.push_back({key, mem.get()});
  }
  // Host work in place of a primitive (run after the stream's earlier work).
  explicit Call(std::function<void()> host) : host_(std::move(host)) {}
  explicit operator bool() const { return primitive_ || host_; }
  void operator()(dnnl::stream& stream) const {
    if (host_) {
      stream.wait();
      host_();
      return;
    }
    dnnl::error::wrap_c_api(
        dnnl_primitive_execute(primitive_.get(), stream.get(), static_cast<int>(c_args_.size()), c_args_.data()),
        "could not execute a primitive");
  }

 private:
  // Binds the shared scratchpad when the primitive needs scratch memory.
  void attach_scratchpad() {
    const_dnnl_primitive_desc_t pd = nullptr;
    dnnl::error::wrap_c_api(dnnl_primitive_get_primitive_desc(primitive_.get(), &pd), "could not query a primitive");
    const dnnl_memory_desc_t* md = dnnl_primitive_desc_query_md(pd, dnnl_query_scratchpad_md, 0);
    if (!md || dnnl_memory_desc_get_size(md) == 0 || keep_.empty()) return;
    scratch_ = detail::shared_scratchpad(dnnl_memory_desc_get_size(md));
    keep_[DNNL_ARG_SCRATCHPAD] =
        dnnl::memory(dnnl::memory::desc(*md), keep_.begin()->second.get_engine(), scratch_.get());
  }

  dnnl::primitive primitive_;
  Args keep_;  // holds the memory objects the C arguments point to
  std::vector<dnnl_exec_arg_t> c_args_;
  std::shared_ptr<float[]> scratch_;
  std::function<void()> host_;
};

// A reorder (layout change or copy) from one memory to another, bound once:
// on the host for the weight layout changes and fp32 -> bf16 conversions
// oneDNN's reorder is slowest on (detail::HostWeightReorder and
// detail::HostBf16Conversion, same bits), else oneDNN's reorder primitive.
inline Call reorder_call(const dnnl::memory& from, const dnnl::memory& to) {
#ifdef ELASTIC_HOST_WEIGHT_REORDER
  if (const auto plan = detail::weight_reorder_plan(from.get_desc(), to.get_desc()))
    return Call(std::function<void()>([r = std::make_shared<detail::HostWeightReorder>(from, to, *plan)] { (*r)(); }));
  if (const auto n = detail::bf16_conversion_size(from.get_desc(), to.get_desc()))
    return Call(std::function<void()>([r = std::make_shared<detail::HostBf16Conversion>(from, to, n)] { (*r)(); }));
#endif
  return Call(dnnl::reorder(from, to, user_scratchpad()), {{DNNL_ARG_FROM, from}, {DNNL_ARG_TO, to}});
}

struct RunCtx;

// A copy of a param in the layout or data type a kernel reads (weights
// re-laid-out for a convolution, or converted to bf16). A frozen param's copy
// is a buffer of the node's own, filled once and kept between steps while it
// stays current (RunCtx::reuse_epoch); a trained param's copy changes every
// step, so it lives in a buffer the graph shares between nodes (a transient)
// and is filled before the forward and again before backward_data (other
// nodes use the shared buffer in between). Memory thus holds copies of the
// frozen weights only.
class DerivedWeight {
 public:
  DerivedWeight() = default;
  // `param`: the param in its own layout; `kernel`: the memory the kernels
  // read (its handle is set here); `shared`: a transient of kernel's layout.
  DerivedWeight(const dnnl::memory& param, const dnnl::memory& kernel, const dnnl::memory& shared)
      : kernel_(kernel), shared_(shared), fill_(reorder_call(param, kernel)) {}
  explicit operator bool() const { return static_cast<bool>(fill_); }
  // A second way to fill the copy: the param scaled per output channel (a
  // batch norm folded into the kernel, Conv2d::link_map).
  void set_scaled_fill(Call fill) { scaled_fill_ = std::move(fill); }

  // Where the copy lives under the installed plan (from Node::on_bind).
  void bind(bool trained) {
    if (!fill_) return;
    trained_ = trained;
    if (trained) {
      own_ = {};
    } else if (!own_) {
      own_ = dnnl::memory(kernel_.get_desc(), kernel_.get_engine());
      epoch_ = 0;
    }
    kernel_.set_data_handle(trained ? shared_.get_data_handle() : own_.get_data_handle());
  }
  // `scaled`: the forward reads the scaled weights (set_scaled_fill).
  inline void before_forward(const RunCtx& run, bool scaled = false);
  inline void before_backward(const RunCtx& run);
  // Bytes of the node's own buffer (held while the param is frozen).
  std::size_t bytes() const { return own_ ? own_.get_desc().get_size() : 0; }
  // Bytes that buffer takes whenever the param is frozen (0: no copy at all).
  std::size_t frozen_bytes() const { return fill_ ? kernel_.get_desc().get_size() : 0; }

 private:
  dnnl::memory kernel_, shared_, own_;
  Call fill_, scaled_fill_;
  bool trained_ = true;
  bool scaled_ = false;      // whether the copy holds the scaled weights
  std::uint64_t epoch_ = 0;  // RunCtx::reuse_epoch of the last fill of own_ (0: never reusable)
};

// State of one pass over the graph.
struct RunCtx {
  dnnl::stream& stream;
  bool training = false;   // dropout active; batch norm in batch-statistics mode uses batch stats
  std::uint64_t step = 0;  // dropout masks are a function of (seed, step, element)
  // Numbers each backward pass of the graph (and each single-node backward call)
  // uniquely; 0 in forward. Within one pass backward_data runs before backward_weights.
  std::uint64_t pass = 0;
  // Nonzero while the graph lets nodes keep what they derive from frozen params
  // (Graph::reuse_frozen_weights); a new value whenever such copies may be stale.
  std::uint64_t reuse_epoch = 0;
};

void DerivedWeight::before_forward(const RunCtx& run, bool scaled) {
  if (!fill_ || (!trained_ && run.reuse_epoch != 0 && epoch_ == run.reuse_epoch && scaled_ == scaled)) return;
  (scaled ? scaled_fill_ : fill_)(run.stream);
  scaled_ = scaled;
  epoch_ = trained_ ? 0 : run.reuse_epoch;
}

void DerivedWeight::before_backward(const RunCtx& run) {
  if (!fill_ || (!trained_ && !scaled_)) return;
  fill_(run.stream);
  scaled_ = false;
}

// Which activations a backward half reads; the memory planner keeps exactly
// those alive until that half has run.
struct Reads {
  bool inputs = false;
  bool output = false;
};

using DataType = dnnl::memory::data_type;

// The layout values take between nodes: channels-last for images (oneDNN's
// convolutions are as fast on it as on blocked layouts, and it has no padding),
// dense row-major for everything else. `type` is the graph's activation type
// (f32, or bf16: core/precision.hpp); a node passes on its input's.
inline dnnl::memory::desc activation_desc(const Shape& shape, DataType type = DataType::f32) {
  if (shape.size() == 4) return {shape, type, dnnl::memory::format_tag::nhwc};
  return plain_desc(shape, type);
}

// oneDNN's blocked layout for images, 16 channels innermost (nChw16c): its
// convolutions run their backward passes faster on it than on channels-last
// for wide layers (measured: benchmarks/RESULTS.md). Only for channel counts
// that are multiples of 16 (no padding); images keep channels-last otherwise.
inline dnnl::memory::desc blocked_activation_desc(const Shape& shape, DataType type = DataType::f32) {
  if (shape.size() == 4 && shape[1] % 16 == 0) return {shape, type, dnnl::memory::format_tag::nChw16c};
  return activation_desc(shape, type);
}
inline bool is_blocked_image(const dnnl::memory::desc& md) {
  const auto t = md.data_type();
  return md.dims().size() == 4 && md == blocked_activation_desc(md.dims(), t) && md != activation_desc(md.dims(), t);
}

inline float* ptr(const dnnl::memory& mem) { return static_cast<float*>(mem.get_data_handle()); }

// A bound buffer as elements of type T (float or bf16, host_math.hpp).
template <class T>
T* ptr_as(const dnnl::memory& mem) {
  return static_cast<T*>(mem.get_data_handle());
}

// Calls f(std::type_identity<T>{}) with T the host type of `type`: float for
// f32, host::bf16 for bf16. Host-side layer code is written once, over T.
template <class F>
decltype(auto) with_element(DataType type, F&& f) {
  switch (type) {
    case DataType::f32:
      return f(std::type_identity<float>{});
    case DataType::bf16:
      return f(std::type_identity<host::bf16>{});
    default:
      fail("values of oneDNN data type {} are not supported (f32 or bf16)", static_cast<int>(type));
  }
}

namespace detail {
// A sum over the middle of three dim groups: `from` (O, R, C) -> `to` (O, C),
// both dense row-major in those terms. O, R and C are products of dims.
struct RowSumShape {
  std::int64_t outer = 1, rows = 1, cols = 1;
};

// The RowSumShape of summing `from` into `to` (to's dims 1 where summed), when
// both are plain (unblocked) layouts and from's dims in memory order (size-1
// dims aside) are kept ones, then summed ones, then kept ones, with `to` dense
// over its kept dims in that same order. Channels-last images summed over
// (H, W) or (N, H, W) and (rows, K) matrices summed over rows are of this
// form. Empty otherwise, and for empty tensors (a dim of size 0).
inline std::optional<RowSumShape> row_sum_shape(const dnnl::memory::desc& from, const dnnl::memory::desc& to) {
  const dnnl_memory_desc_t &f = from.data, &t = to.data;
  const auto plain = [](const dnnl_memory_desc_t& m) {
    if (m.format_kind != dnnl_blocked || m.format_desc.blocking.inner_nblks != 0 || m.offset0 != 0) return false;
    for (int d = 0; d < m.ndims; ++d)
      if (m.padded_dims[d] != m.dims[d] || m.dims[d] <= 0) return false;
    return true;
  };
  if (f.ndims != t.ndims || !plain(f) || !plain(t)) return {};
  std::vector<int> order;  // from's dims of size > 1, outermost first
  for (int d = 0; d < f.ndims; ++d) {
    if (t.dims[d] != f.dims[d] && t.dims[d] != 1) return {};
    if (f.dims[d] > 1) order.push_back(d);
  }
  const auto& fs = f.format_desc.blocking.strides;
  std::sort(order.begin(), order.end(), [&](int a, int b) { return fs[a] > fs[b]; });
  RowSumShape s;
  int group = 0;  // 0: outer kept dims, 1: summed dims, 2: inner kept dims
  std::int64_t dense = 1;
  for (auto it = order.rbegin(); it != order.rend(); ++it) {  // from's innermost dim first
    if (fs[*it] != dense) return {};
    dense *= f.dims[*it];
  }
  for (const int d : order) {
    const bool summed = t.dims[d] == 1;
    if (summed && group == 2) return {};
    if (summed) group = 1;
    if (!summed && group == 1) group = 2;
    (group == 0 ? s.outer : group == 1 ? s.rows : s.cols) *= f.dims[d];
  }
  if (group == 0) return {};  // nothing summed
  std::int64_t stride = 1;    // `to` dense over its kept dims, in from's order
  for (auto it = order.rbegin(); it != order.rend(); ++it) {
    if (t.dims[*it] == 1) continue;
    if (t.format_desc.blocking.strides[*it] != stride) return {};
    stride *= t.dims[*it];
  }
  return s;
}

// `to` (O, C) = the column sums of `from` (O, R, C) on the host, in fp32 and in
// a fixed order whatever the thread count: fixed blocks of rows summed into
// partial rows (blocks spread over the OpenMP threads), then the partials of
// each o added in block order and rounded once into `to`'s type.
class HostRowSum {
 public:
  HostRowSum(dnnl::memory from, dnnl::memory to, RowSumShape s)
      : from_(std::move(from)),
        to_(std::move(to)),
        s_(s),
        block_rows_(std::max<std::int64_t>(1, kBlockElements / s.cols)),
        blocks_((s.rows + block_rows_ - 1) / block_rows_),
        partial_(static_cast<std::size_t>(s.outer * blocks_ * s.cols)) {}

  void operator()() {
    const auto from_type = from_.get_desc().data_type(), to_type = to_.get_desc().data_type();
    with_element(from_type, [&]<class T>(std::type_identity<T>) {
      const T* x = static_cast<const T*>(from_.get_data_handle());
      const auto blocks = [&](std::int64_t begin, std::int64_t end) ELASTIC_INLINE {
        for (std::int64_t b = begin; b < end; ++b) {
          const std::int64_t o = b / blocks_, r0 = (b % blocks_) * block_rows_;
          const std::int64_t r1 = std::min(s_.rows, r0 + block_rows_);
          float* __restrict acc = partial_.data() + b * s_.cols;
          std::fill(acc, acc + s_.cols, 0.0f);
          for (std::int64_t r = r0; r < r1; ++r) {
            const T* __restrict row = x + (o * s_.rows + r) * s_.cols;
            for (std::int64_t c = 0; c < s_.cols; ++c) acc[c] += host::to_float(row[c]);
          }
        }
      };
      const std::int64_t total = s_.outer * blocks_;
      if (s_.outer * s_.rows * s_.cols <= host::kParallelMin)
        host::vectorized([&]() ELASTIC_INLINE { blocks(0, total); });
      else
        host::parallel_rows(total, omp_get_max_threads(),
                            [&](std::int64_t b, std::int64_t e, int) ELASTIC_INLINE { blocks(b, e); });
    });
    with_element(to_type, [&]<class U>(std::type_identity<U>) {
      U* y = static_cast<U*>(to_.get_data_handle());
      for (std::int64_t o = 0; o < s_.outer; ++o) {
        float* __restrict first = partial_.data() + o * blocks_ * s_.cols;
        for (std::int64_t k = 1; k < blocks_; ++k) {
          const float* __restrict more = first + k * s_.cols;
          for (std::int64_t c = 0; c < s_.cols; ++c) first[c] += more[c];
        }
        for (std::int64_t c = 0; c < s_.cols; ++c) y[o * s_.cols + c] = host::from_float<U>(first[c]);
      }
    });
  }

 private:
  static constexpr std::int64_t kBlockElements = 8192;  // per block of rows: its partial stays in L1

  dnnl::memory from_, to_;
  RowSumShape s_;
  std::int64_t block_rows_, blocks_;
  std::vector<float> partial_;
};
}  // namespace detail

// `to` = the sum of `from` over the dims where `to` has size 1, bound once: on
// the host (detail::HostRowSum) when the layouts allow (every sum the layers
// take: channels-last images over (H, W) or (N, H, W), matrices over rows),
// else oneDNN's reduction primitive, which is far slower (a 12544 x 256
// matrix's column sums on 2 threads: 14.7 ms, against 0.13 ms on the host;
// benchmarks/linear_kernels); a copy when no dim is summed (a
// batch of one 1x1 image), since oneDNN refuses a reduction that reduces
// nothing.
inline Call sum_call(const dnnl::memory& from, const dnnl::memory& to) {
  using namespace dnnl;
  if (from.get_desc().dims() == to.get_desc().dims()) return reorder_call(from, to);
  if (const auto s = detail::row_sum_shape(from.get_desc(), to.get_desc()))
    return Call(std::function<void()>([sum = std::make_shared<detail::HostRowSum>(from, to, *s)] { (*sum)(); }));
  const reduction::primitive_desc pd(
      reduction::desc(algorithm::reduction_sum, from.get_desc(), to.get_desc(), 0.0f, 0.0f), user_scratchpad(),
      from.get_engine());
  return Call(reduction(pd), {{DNNL_ARG_SRC, from}, {DNNL_ARG_DST, to}});
}

// A node whose forward, in some modes, is a per-channel affine map of its one
// input followed by a clamp (batch norm with running statistics, and its
// ReLU), which the convolution before it can apply inside its own kernel
// (scaled weights, the shift as bias, the clamp as a post-op), writing this
// node's output directly. The graph links the two (Graph::link_folds) and
// turns the fold on under plans where fold_applies: no backward of the
// convolution, and this node's params frozen (their gradients read the input,
// which a fold never writes).
class FoldableMap {
 public:
  virtual ~FoldableMap() = default;
  // Whether this forward computes the map (else the convolution runs unfused).
  virtual bool map_applies(const RunCtx& run) const = 0;
  // Fills map_scale() and map_shift() for this forward: out = clamp(in * scale + shift).
  virtual void prepare_map() = 0;
  // (C) f32 vectors, one value per channel.
  virtual const dnnl::memory& map_scale() const = 0;
  virtual const dnnl::memory& map_shift() const = 0;
  // The clamp after the map: relu [0, inf], relu6 [0, 6], none [-inf, inf].
  virtual float map_lo() const = 0;
  virtual float map_hi() const = 0;
  // While on, forward leaves the output alone whenever the map applies: the
  // convolution has written it.
  virtual void set_folded(bool on) = 0;
};

class Node {
 public:
  explicit Node(std::string name) : name_(std::move(name)) {}
  virtual ~Node() = default;
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  virtual std::string_view type() const = 0;

  // Adds this node's params and buffers to the store (names prefixed by name()).
  virtual void declare(ParamStore&) {}

  // Infers the output (must call set_output) and creates the primitives for
  // these input descriptors. Params are allocated by now.
  virtual void setup(std::span<const dnnl::memory::desc> inputs, Context& ctx, ParamStore& params) = 0;

  virtual void forward(const RunCtx& run) = 0;
  // Writes the gradient w.r.t. every input i with has_diff_src(i); reads diff_dst().
  virtual void backward_data(const RunCtx& run) = 0;
  // Writes the gradient of every param of this node; reads diff_dst().
  virtual void backward_weights(const RunCtx&) {}

  virtual Reads data_reads() const { return {}; }
  virtual Reads weights_reads() const { return {}; }
  // Bytes of the weight copies this node keeps between steps (re-laid-out or
  // bf16 copies of frozen weights: DerivedWeight).
  virtual std::size_t weight_copy_bytes() const { return 0; }
  // Bytes of those copies whenever the node's params are frozen (and the graph keeps copies).
  virtual std::size_t frozen_copy_bytes() const { return 0; }
  // Bytes of the buffers of its own that forward writes, outside the graph's arena
  // (attention's probabilities); small per-channel vectors are not counted.
  virtual std::size_t own_bytes() const { return 0; }
  // Bytes of a buffer that forward fills for backward_data, in place of an input
  // backward would otherwise read (GELU's derivative). The memory plan gives it a
  // place in the arena from this node's forward to its backward under plans where
  // backward_data runs; saved() is null under the others. Fixed by setup.
  virtual std::size_t saved_bytes() const { return 0; }

  // Folding (FoldableMap): the map this node's forward can be, or null.
  virtual FoldableMap* foldable_map() { return nullptr; }
  // Prepares to apply `map` inside this node's forward kernel, writing
  // `map_dst` (the map's node's output) instead of its own output; false when
  // it cannot (the graph then runs both nodes unfused). Called after every setup.
  virtual bool link_map(FoldableMap&, const dnnl::memory&, Context&) { return false; }
  // Whether the linked map is applied from the next forward on (while it applies).
  virtual void fold_map(bool) {}

  const std::string& name() const { return name_; }
  const std::vector<int>& param_ids() const { return params_; }
  dnnl::memory::desc output_desc() const { return dst_.get_desc(); }
  std::size_t num_inputs() const { return src_.size(); }

  // --- used by the graph ---
  // Starts a (re)setup: input memories for these descriptors; the transients
  // and gradient memories of an earlier setup are dropped.
  void create_inputs(std::span<const dnnl::memory::desc> inputs, const dnnl::engine& engine) {
    engine_ = engine;
    src_.clear();
    diff_src_.clear();
    transients_.clear();
    grad_memories_.clear();
    for (const auto& md : inputs) {
      src_.emplace_back(md, engine, static_cast<void*>(nullptr));
      diff_src_.emplace_back(md, engine, static_cast<void*>(nullptr));
    }
    has_diff_src_.assign(inputs.size(), false);
  }
  bool has_output() const { return static_cast<bool>(dst_); }
  // The output's memory (its handle set by bind).
  const dnnl::memory& output_memory() const { return dst_; }
  struct Transient {
    int slot;
    dnnl::memory memory;
  };
  std::span<Transient> transients() { return transients_; }

  void bind(std::span<float* const> src, float* dst, std::span<float* const> diff_src, float* diff_dst,
            bool trained = true, float* saved = nullptr) {
    trained_ = trained;
    saved_ = saved;
    for (std::size_t i = 0; i < src_.size(); ++i) {
      src_[i].set_data_handle(src[i]);
      diff_src_[i].set_data_handle(diff_src[i]);
      has_diff_src_[i] = diff_src[i] != nullptr;
    }
    dst_.set_data_handle(dst);
    diff_dst_.set_data_handle(diff_dst);
    for (auto& g : grad_memories_) g.memory.set_data_handle((*store_)[static_cast<std::size_t>(g.param)].grad);
    on_bind();
  }
  void set_store(const ParamStore& store) { store_ = &store; }

 protected:
  // Declares the output; creates dst()/diff_dst() with this descriptor.
  void set_output(const dnnl::memory::desc& md) {
    dst_ = dnnl::memory(md, engine_, static_cast<void*>(nullptr));
    diff_dst_ = dnnl::memory(md, engine_, static_cast<void*>(nullptr));
  }

  int add_param(ParamStore& store, std::string_view suffix, Shape shape, ParamRole role, Init init) {
    return add_param_named(store, fmt::format("{}.{}", name_, suffix), std::move(shape), role, init);
  }
  // A param whose full name does not start with the node's (e.g. ViT's top-level class_token).
  int add_param_named(ParamStore& store, std::string full_name, Shape shape, ParamRole role, Init init) {
    const int k = store.add(std::move(full_name), std::move(shape), role, init);
    params_.push_back(k);
    return k;
  }

  // Called after every bind, for nodes that keep extra views of bound buffers.
  virtual void on_bind() {}

  // A memory over param k's gradient, rebound to wherever that gradient lives
  // whenever the graph binds (ParamStore::stream_grads moves it).
  dnnl::memory grad_memory(int k, const dnnl::memory::desc& md) {
    grad_memories_.push_back({k, dnnl::memory(md, engine_, (*store_)[static_cast<std::size_t>(k)].grad)});
    return grad_memories_.back().memory;
  }
  // Param k's gradient where it lives now, for nodes that write it themselves.
  float* grad_of(int k) const { return (*store_)[static_cast<std::size_t>(k)].grad; }

  // The transient slot of trained weights' copies (DerivedWeight); slots 0
  // and 1 are the layers' own.
  static constexpr int kWeightCopySlot = 2;

  // A buffer used only within one pass of this node (e.g. weights reordered for
  // one kernel). Nodes run one at a time, so every node's transients of the same
  // `slot` share one allocation of the graph; a pass that needs two buffers at
  // once takes them from different slots. Bound once the graph is set up.
  dnnl::memory transient(const dnnl::memory::desc& md, int slot = 0) {
    transients_.push_back({slot, dnnl::memory(md, engine_, static_cast<void*>(nullptr))});
    return transients_.back().memory;
  }

  // Whether the installed plan trains this node's params (else they are frozen).
  bool trained() const { return trained_; }
  // The saved buffer (saved_bytes), or null where this plan runs no backward_data here.
  float* saved() const { return saved_; }
  const dnnl::memory& src(std::size_t i = 0) const { return src_[i]; }
  const dnnl::memory& diff_src(std::size_t i = 0) const { return diff_src_[i]; }
  bool has_diff_src(std::size_t i = 0) const { return has_diff_src_[i]; }
  const dnnl::memory& dst() const { return dst_; }
  const dnnl::memory& diff_dst() const { return diff_dst_; }
  const dnnl::engine& engine() const { return engine_; }

  // Input check helper: throws an error naming this layer.
  void expect(bool ok, std::string_view what) const {
    if (!ok) fail("layer '{}' ({}): {}", name_, type(), what);
  }

  std::vector<int> params_;

 private:
  std::string name_;
  dnnl::engine engine_;
  std::vector<dnnl::memory> src_, diff_src_;
  std::vector<bool> has_diff_src_;
  dnnl::memory dst_, diff_dst_;
  std::vector<Transient> transients_;
  bool trained_ = true;
  float* saved_ = nullptr;
  struct GradMemory {
    int param;
    dnnl::memory memory;
  };
  std::vector<GradMemory> grad_memories_;
  const ParamStore* store_ = nullptr;
};

}  // namespace elastic
