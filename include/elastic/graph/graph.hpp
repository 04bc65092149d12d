// Graph: nodes in topological order, the values between them and the params in
// forward order (the k = 0..N-1 of the method). A step is forward(), then
// backward() under the installed BackwardPlan; select() installs a plan from a
// mask of params and lays out activation memory for exactly that plan; memory
// of frozen params' gradients and of a larger earlier plan goes back to the OS.
#pragma once

#include <algorithm>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "elastic/core/context.hpp"
#include "elastic/core/error.hpp"
#include "elastic/core/host_math.hpp"
#include "elastic/core/precision.hpp"
#include "elastic/core/tensor.hpp"
#include "elastic/graph/backward_plan.hpp"
#include "elastic/graph/node.hpp"
#include "elastic/graph/param.hpp"

namespace elastic {

using ValueId = int;

// A graph input: a value the user writes before forward(). The user always
// writes fp32; in a bf16 graph the node keeps that fp32 copy (staging) and its
// forward converts it into the bf16 value the layers read.
class InputNode final : public Node {
 public:
  InputNode(std::string name, Shape shape, Precision precision)
      : Node(std::move(name)), shape_(std::move(shape)), precision_(precision) {}
  std::string_view type() const override { return "input"; }
  void setup(std::span<const dnnl::memory::desc>, Context& ctx, ParamStore&) override {
    set_output(activation_desc(shape_, activation_type(precision_)));
    if (precision_ == Precision::fp32) return;
    if (!staging_) staging_ = aligned_floats(numel(shape_));
    staged_ = dnnl::memory(activation_desc(shape_), ctx.engine(), staging_.get());
    convert_ = reorder_call(staged_, dst());
  }
  void forward(const RunCtx& run) override {
    if (convert_) convert_(run.stream);
  }
  void backward_data(const RunCtx&) override {}
  // The fp32 buffer the user writes (in the layout of activation_desc), or
  // null when the value itself is fp32.
  const dnnl::memory* staged() const { return staging_ ? &staged_ : nullptr; }

 private:
  Shape shape_;
  Precision precision_;
  std::shared_ptr<float[]> staging_;
  dnnl::memory staged_;
  Call convert_;
};

class Graph {
 public:
  // `precision`: the format every layer computes in (core/precision.hpp).
  // bf16 is refused on a CPU without native bf16 dot products (a UsageError
  // naming the missing CPU feature).
  explicit Graph(Context& ctx, Precision precision = Precision::fp32) : ctx_(ctx), precision_(precision) {
    require_precision(precision, "a bf16 graph");
  }
  Graph(const Graph&) = delete;
  Graph& operator=(const Graph&) = delete;

  // A graph input of a plain shape (NCHW for images). With requires_grad its
  // gradient is computed whenever anything is (used by gradient checks).
  ValueId input(std::string name, Shape shape, bool requires_grad = false) {
    const ValueId v = add<InputNode>({}, std::move(name), std::move(shape), precision_);
    info_[v].is_input = true;
    info_[v].requires_grad = requires_grad;
    return v;
  }

  // Adds node N(args...) reading `inputs`; returns the value it produces.
  template <class N, class... A>
  ValueId add(std::vector<ValueId> inputs, A&&... args) {
    if (finalized_) fail("cannot add a node after finalize()");
    for (ValueId v : inputs)
      if (v < 0 || v >= static_cast<ValueId>(nodes_.size())) fail("node input {} does not name an existing value", v);
    auto node = std::make_unique<N>(std::forward<A>(args)...);
    const ValueId id = static_cast<ValueId>(nodes_.size());
    node->declare(params_);
    node->set_store(params_);
    for (int k : node->param_ids()) params_[k].node = id;
    Topology::NodeInfo info;
    info.inputs = std::move(inputs);
    info.params = node->param_ids();
    info_.push_back(std::move(info));
    nodes_.push_back(std::move(node));
    return id;
  }

  // Keeps `v` (and its gradient) in a buffer of its own, readable after a step.
  void mark_output(ValueId v) { info_.at(v).is_output = true; }

  // Allocates and initializes params, sets up every node for its input shapes
  // and installs the plan that trains every param.
  void finalize(std::uint64_t seed = 0) {
    if (finalized_) fail("graph is already finalized");
    params_.allocate(seed);
    setup_nodes();
    topo_.nodes = info_;
    topo_.folds = folds_;
    topo_.num_params = static_cast<int>(params_.size());
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      if (info_[i].is_input || info_[i].is_output) pinned_act_[i] = aligned_floats(info_[i].bytes / 4 + 1);
      if (info_[i].is_output || (info_[i].is_input && info_[i].requires_grad))
        pinned_grad_[i] = aligned_floats(info_[i].bytes / 4 + 1);
    }
    finalized_ = true;
    select(std::vector<bool>(params_.size(), true));
  }

  // Installs the plan of `mask` (one flag per param). Plans are cached, so
  // switching between a few selections costs only re-binding handles; a long run's
  // selections keep at most kCachedPlans of them (then only the one in force is kept).
  static constexpr std::size_t kCachedPlans = 64;
  void select(const std::vector<bool>& mask) {
    require_finalized();
    auto it = plans_.find(mask);
    if (it == plans_.end()) {
      if (plans_.size() >= kCachedPlans)
        std::erase_if(plans_, [&](const auto& entry) { return &entry.second != current_; });
      Compiled c;
      c.plan = derive_plan(topo_, mask);
      c.memory = plan_memory(topo_, c.plan);
      it = plans_.emplace(mask, std::move(c)).first;
    }
    current_ = &it->second;
    // The arena is mapped for the largest plan seen and takes memory only where
    // written; a smaller plan hands back the pages past its own end.
    const std::int64_t need = current_->memory.arena_bytes / 4 + 1;
    if (need > arena_floats_) {
      arena_ = lazy_floats(need);
      arena_floats_ = need;
    } else {
      release_floats(arena_.get() + need, arena_floats_ - need);
    }
    params_.release_grads(mask);
    ++reuse_epoch_;
    bind();
  }
  // Gives the arena's memory back to the OS between steps (nothing in it outlives a step; its
  // pages read as zero and take memory again when the next step writes them).
  void release_activations() {
    require_finalized();
    release_floats(arena_.get(), arena_floats_);
  }
  void select_all() { select(std::vector<bool>(params_.size(), true)); }
  std::size_t cached_plans() const { return plans_.size(); }
  void select_none() { select(std::vector<bool>(params_.size(), false)); }

  const BackwardPlan& plan() const { return current_->plan; }
  // Bytes of the weight copies the nodes keep between steps (Node::weight_copy_bytes).
  std::size_t weight_copy_bytes() const {
    std::size_t bytes = 0;
    for (const auto& node : nodes_) bytes += node->weight_copy_bytes();
    return bytes;
  }
  // Bytes of activations and gradients the current plan holds at its peak.
  std::int64_t plan_arena_bytes() const { return current_->memory.arena_bytes; }
  // The same for the plan of `mask` (one flag per param), without installing it.
  std::int64_t plan_arena_bytes(const std::vector<bool>& mask) const {
    require_finalized();
    if (const auto it = plans_.find(mask); it != plans_.end()) return it->second.memory.arena_bytes;
    return plan_memory(topo_, derive_plan(topo_, mask)).arena_bytes;
  }
  // Bytes of the buffers every node shares (oneDNN scratchpads, trained weights' copies): one
  // per transient slot, as large as the largest request for it.
  std::int64_t transient_bytes() const {
    std::int64_t bytes = 0;
    for (std::size_t b : transient_bytes_) bytes += static_cast<std::int64_t>(b);
    return bytes;
  }
  // Bytes of the buffers nodes keep of their own (Node::own_bytes).
  std::int64_t own_bytes() const {
    std::int64_t bytes = 0;
    for (const auto& node : nodes_) bytes += static_cast<std::int64_t>(node->own_bytes());
    return bytes;
  }
  // Bytes of the pinned values and gradients (inputs and outputs, kept in buffers of their own).
  std::int64_t pinned_bytes() const {
    std::int64_t bytes = 0;
    for (const auto* pinned : {&pinned_act_, &pinned_grad_})
      for (const auto& [v, buffer] : *pinned) bytes += (info_[std::size_t(v)].bytes / 4 + 1) * 4;
    return bytes;
  }

  // Whether frozen params' weight copies (DerivedWeight) are kept between steps (the default):
  // off, every frozen copy is rebuilt in the shared buffer on each pass, as trained params'
  // copies are, and the memory of the kept ones goes back. Results are the same either way.
  void keep_weight_copies(bool on) {
    require_finalized();
    if (keep_copies_ == on) return;
    keep_copies_ = on;
    ++reuse_epoch_;
    bind();
  }
  bool keeps_weight_copies() const { return keep_copies_; }

  // Whether frozen batch norms run inside the convolution before them (the
  // default; FoldableMap): under plans that run no backward of the convolution
  // and keep the norm's params frozen (fold_applies), the convolution's kernel
  // applies the norm's map and activation and writes the norm's output.
  // Off, each runs on its own; results differ in the last bits (the fold does
  // not round the convolution's output before the map).
  void fold_maps(bool on) {
    require_finalized();
    folding_ = on;
    bind();
  }
  bool folding() const { return folding_; }
  // (convolution, map) node pairs that fold under plans where fold_applies.
  const std::vector<std::pair<int, int>>& folds() const { return folds_; }

  void forward(bool training) {
    require_finalized();
    training_ = training;
    data_node_ = -1;
    RunCtx run{ctx_.stream(), training, step_, 0, reuse_ ? reuse_epoch_ : 0};
    for (auto& node : nodes_) node->forward(run);
    ctx_.wait();
  }

  // Gradients of the selected params (and of inputs that require them) from
  // the output gradients, which the user writes (write_grad) before the step.
  // Runs in the mode of the last forward (dropout masks, batch statistics).
  void backward() {
    backward([](int) {});
  }
  // The same, calling after_weights(i) as soon as node i's params have their
  // gradients (after its backward_weights), e.g. to update them right away.
  template <class AfterWeights>
  void backward(AfterWeights&& after_weights) {
    require_finalized();
    RunCtx run{ctx_.stream(), training_, step_, ++pass_};
    data_node_ = -1;
    const auto& plan = current_->plan;
    for (int i = static_cast<int>(nodes_.size()) - 1; i >= 0; --i) {
      run_backward(i, run, plan);
      if (plan.run_weights[std::size_t(i)]) {
        ctx_.wait();
        after_weights(i);
      }
    }
    ctx_.wait();
  }

  // Streamed gradients (ParamStore::stream_grads), nodes rebound to them.
  void stream_grads(bool on) {
    require_finalized();
    params_.stream_grads(on);
    bind();
  }

  // The pieces of a step, for the profiler: node i's passes alone. A
  // backward_weights_node(i) right after backward_data_node(i) belongs to the
  // same pass, as in backward(), so it costs what it costs there.
  void forward_node(int i, bool training) {
    training_ = training;
    data_node_ = -1;
    nodes_[i]->forward({ctx_.stream(), training, step_, 0, reuse_ ? reuse_epoch_ : 0});
  }
  void backward_data_node(int i) {
    RunCtx run{ctx_.stream(), training_, step_, ++pass_};
    nodes_[i]->backward_data(run);
    accumulate_gradients(i);
    data_node_ = i;
  }
  void backward_weights_node(int i) {
    const std::uint64_t pass = data_node_ == i ? pass_ : ++pass_;
    data_node_ = -1;
    nodes_[i]->backward_weights({ctx_.stream(), training_, step_, pass});
  }

  // Plain copies in and out of pinned values (inputs and outputs).
  Tensor read(ValueId v) { return to_plain(memory_of(v, false), ctx_.stream()); }
  void write(ValueId v, const Tensor& t) { from_plain(t, memory_of(v, false), ctx_.stream()); }
  Tensor read_grad(ValueId v) { return to_plain(memory_of(v, true), ctx_.stream()); }
  void write_grad(ValueId v, const Tensor& t) { from_plain(t, memory_of(v, true), ctx_.stream()); }

  // Direct access to a pinned value's buffer in its physical layout (desc(v):
  // NHWC for images), for writing inputs every step without a copy or a
  // reorder. An input's is always fp32 (a bf16 graph converts it in forward);
  // other values are fp32 in an fp32 graph.
  float* value_data(ValueId v) {
    if (const auto* staged = staged_input(v)) return ptr(*staged);
    return pinned(v, false);
  }
  float* grad_data(ValueId v) { return pinned(v, true); }
  dnnl::memory::desc desc(ValueId v) const {
    if (const auto* staged = staged_input(v)) return staged->get_desc();
    return nodes_.at(v)->output_desc();
  }
  Precision precision() const { return precision_; }

  // While on, forward() lets nodes keep what they derive from frozen params
  // from one step to the next (a convolution's weights re-laid-out for its
  // kernel) instead of rebuilding it: for training loops in which params change
  // only through the optimizer, which updates selected params alone. Turning it
  // on and every select() start afresh; a param written any other way while it
  // is on reaches a frozen convolution only after one of those.
  void reuse_frozen_weights(bool on) {
    reuse_ = on;
    ++reuse_epoch_;
  }

  // The graph's settings for a run of training steps, for the lifetime of
  // the object: frozen weights reused and gradients streamed; both off again
  // at its end (for evaluation, probes and checkpoints between runs).
  class TrainingSteps {
   public:
    explicit TrainingSteps(Graph& g) : g_(g) {
      g_.reuse_frozen_weights(true);
      g_.stream_grads(true);
    }
    ~TrainingSteps() {
      g_.stream_grads(false);
      g_.reuse_frozen_weights(false);
    }
    TrainingSteps(const TrainingSteps&) = delete;
    TrainingSteps& operator=(const TrainingSteps&) = delete;

   private:
    Graph& g_;
  };

  // Runs every kernel on `threads` threads from the next pass on (0 = all
  // cores): the context's count changes and every node is set up again, so
  // that kernels whose work split is fixed when they are created split it
  // anew. Between steps only; params, gradients, optimizer state, inputs and
  // labels are kept, frozen weights are re-laid-out once. Results differ from
  // the old count's only by the order of floating-point sums.
  void set_threads(int threads) {
    require_finalized();
    const int before = ctx_.threads();
    ctx_.set_threads(threads);
    if (ctx_.threads() == before) return;
    setup_nodes();
    ++reuse_epoch_;
    bind();
  }

  // Dropout masks depend on this counter; the trainer advances it every step.
  void set_step(std::uint64_t step) { step_ = step; }
  std::uint64_t step() const { return step_; }

  ParamStore& params() { return params_; }
  const ParamStore& params() const { return params_; }
  Context& context() { return ctx_; }
  std::size_t size() const { return nodes_.size(); }
  Node& node(ValueId v) { return *nodes_.at(v); }
  template <class N>
  N& node_as(ValueId v) {
    auto* n = dynamic_cast<N*>(nodes_.at(v).get());
    if (!n) fail("value {} ('{}') is not produced by a {}", v, nodes_.at(v)->name(), typeid(N).name());
    return *n;
  }
  const Topology& topology() const { return topo_; }
  Shape shape(ValueId v) const { return nodes_.at(v)->output_desc().dims(); }

 private:
  struct Compiled {
    BackwardPlan plan;
    MemoryPlan memory;
  };

  // Sets every node up for its input shapes and the context's thread count,
  // and gives the transient slots their (shared) buffers. Run by finalize()
  // and again by set_threads(): a node's setup is repeatable.
  void setup_nodes() {
    std::vector<int> consumers(nodes_.size(), 0);
    for (const auto& info : info_)
      for (int v : info.inputs) ++consumers[v];
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      auto& node = *nodes_[i];
      std::vector<dnnl::memory::desc> in;
      for (int v : info_[i].inputs) in.push_back(nodes_[v]->output_desc());
      const dnnl::memory::desc before = node.has_output() ? node.output_desc() : dnnl::memory::desc();
      node.create_inputs(in, ctx_.engine());
      node.setup(in, ctx_, params_);
      if (!node.has_output()) fail("layer '{}' ({}) set no output in setup", node.name(), node.type());
      if (finalized_ && node.output_desc() != before)
        fail("layer '{}' ({}) changed its output layout when set up again", node.name(), node.type());
      info_[i].bytes = static_cast<std::int64_t>(node.output_desc().get_size());
      info_[i].saved_bytes = static_cast<std::int64_t>(node.saved_bytes());
      const Reads d = node.data_reads(), w = node.weights_reads();
      info_[i].data_reads_inputs = d.inputs;
      info_[i].data_reads_output = d.output;
      info_[i].weights_reads_inputs = w.inputs;
      info_[i].weights_reads_output = w.output;
      if (consumers[i] == 0) info_[i].is_output = true;  // its gradient can only come from the user
    }
    transients_.clear();
    auto& transient_bytes = transient_bytes_;  // per slot, the largest request
    transient_bytes.clear();
    for (auto& node : nodes_)
      for (auto& t : node->transients()) {
        if (t.slot < 0) fail("layer '{}' asked for transient slot {}", node->name(), t.slot);
        if (transient_bytes.size() <= std::size_t(t.slot)) transient_bytes.resize(std::size_t(t.slot) + 1, 0);
        transient_bytes[std::size_t(t.slot)] =
            std::max(transient_bytes[std::size_t(t.slot)], t.memory.get_desc().get_size());
      }
    for (std::size_t bytes : transient_bytes)
      transients_.push_back(lazy_floats(static_cast<std::int64_t>(bytes / 4 + 1)));
    for (auto& node : nodes_)
      for (auto& t : node->transients()) t.memory.set_data_handle(transients_[std::size_t(t.slot)].get());
    link_folds(consumers);
  }

  // Pairs (conv, map) where node `map` can run inside the kernel of the node
  // before it (FoldableMap): the map's only input is that node's value, which
  // nothing else reads and the user does not see. Once finalized, only pairs
  // the topology holds (whose inputs its memory plans keep alive) are linked.
  void link_folds(const std::vector<int>& consumers) {
    folds_.clear();
    for (std::size_t b = 0; b < nodes_.size(); ++b) {
      FoldableMap* map = nodes_[b]->foldable_map();
      if (!map || info_[b].inputs.size() != 1) continue;
      const int c = info_[b].inputs[0];
      const std::pair<int, int> pair{c, static_cast<int>(b)};
      if (consumers[std::size_t(c)] != 1 || info_[std::size_t(c)].is_output || info_[std::size_t(c)].is_input) continue;
      if (finalized_ && std::find(topo_.folds.begin(), topo_.folds.end(), pair) == topo_.folds.end()) continue;
      if (nodes_[std::size_t(c)]->link_map(*map, nodes_[b]->output_memory(), ctx_)) folds_.push_back(pair);
    }
  }

  void require_finalized() const {
    if (!finalized_) fail("graph is not finalized; call finalize() first");
  }

  // backward_data first: a node may reuse in backward_weights what its
  // backward_data of the same pass computed (batch norm's gamma/beta sums).
  void run_backward(int i, const RunCtx& run, const BackwardPlan& plan) {
    if (plan.run_data[i]) {
      nodes_[i]->backward_data(run);
      accumulate_gradients(i);
    }
    if (plan.run_weights[i]) nodes_[i]->backward_weights(run);
  }

  // Adds the gradients node i wrote into temporaries into their values' gradients.
  void accumulate_gradients(int i) {
    const auto& temps = current_->memory.temp_offset[i];
    for (std::size_t j = 0; j < temps.size(); ++j) {
      if (temps[j] < 0) continue;
      const int v = info_[i].inputs[j];
      with_element(nodes_[v]->output_desc().data_type(), [&]<class T>(std::type_identity<T>) {
        host::accumulate(reinterpret_cast<T*>(grad_ptr(v)), reinterpret_cast<const T*>(at(temps[j])),
                         info_[v].bytes / std::int64_t(sizeof(T)));
      });
    }
  }

  float* at(std::int64_t offset) {
    return offset < 0 ? nullptr : reinterpret_cast<float*>(reinterpret_cast<char*>(arena_.get()) + offset);
  }
  float* act_ptr(int v) {
    auto it = pinned_act_.find(v);
    return it != pinned_act_.end() ? it->second.get() : at(current_->memory.act_offset[v]);
  }
  float* grad_ptr(int v) {
    auto it = pinned_grad_.find(v);
    return it != pinned_grad_.end() ? it->second.get() : at(current_->memory.grad_offset[v]);
  }

  void bind() {
    const auto& plan = current_->plan;
    const auto& mem = current_->memory;
    std::vector<float*> src, dsrc;
    for (std::size_t i = 0; i < nodes_.size(); ++i) {
      const auto& inputs = info_[i].inputs;
      src.assign(inputs.size(), nullptr);
      dsrc.assign(inputs.size(), nullptr);
      for (std::size_t j = 0; j < inputs.size(); ++j) {
        src[j] = act_ptr(inputs[j]);
        if (plan.need_diff_src[i][j])
          dsrc[j] = mem.temp_offset[i][j] >= 0 ? at(mem.temp_offset[i][j]) : grad_ptr(inputs[j]);
      }
      nodes_[i]->bind(src, act_ptr(static_cast<int>(i)), dsrc, plan.active[i] ? grad_ptr(static_cast<int>(i)) : nullptr,
                      plan.run_weights[i] || !keep_copies_, at(mem.saved_offset[i]));
    }
    for (const auto& [c, b] : folds_) {
      const bool on = folding_ && fold_applies(plan, c, b);
      nodes_[std::size_t(b)]->foldable_map()->set_folded(on);
      nodes_[std::size_t(c)]->fold_map(on);
    }
  }

  float* pinned(ValueId v, bool grad) {
    require_finalized();
    auto& pinned = grad ? pinned_grad_ : pinned_act_;
    auto it = pinned.find(v);
    if (it == pinned.end())
      fail("value '{}' is not kept after a step{}; mark it as an output before finalize()", nodes_.at(v)->name(),
           grad ? " with its gradient" : "");
    return it->second.get();
  }

  dnnl::memory memory_of(ValueId v, bool grad) {
    if (const auto* staged = staged_input(v); staged && !grad) return *staged;
    return dnnl::memory(nodes_[v]->output_desc(), ctx_.engine(), pinned(v, grad));
  }

  // The fp32 buffer of input v in a bf16 graph, or null.
  const dnnl::memory* staged_input(ValueId v) const {
    const auto* input = info_.at(v).is_input ? dynamic_cast<const InputNode*>(nodes_.at(v).get()) : nullptr;
    return input ? input->staged() : nullptr;
  }

  Context& ctx_;
  Precision precision_;
  ParamStore params_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<Topology::NodeInfo> info_;
  Topology topo_;
  bool finalized_ = false;
  std::map<std::vector<bool>, Compiled> plans_;  // at most kCachedPlans
  const Compiled* current_ = nullptr;
  std::shared_ptr<float[]> arena_;
  std::vector<std::shared_ptr<float[]>> transients_;  // per slot, shared by every node's transients()
  std::vector<std::size_t> transient_bytes_;          // per slot, its size
  bool keep_copies_ = true;                           // keep_weight_copies
  std::int64_t arena_floats_ = 0;
  std::map<int, std::shared_ptr<float[]>> pinned_act_, pinned_grad_;
  std::vector<std::pair<int, int>> folds_;  // (convolution, map) pairs link_folds found
  bool folding_ = true;                     // fold_maps
  std::uint64_t step_ = 0;
  std::uint64_t pass_ = 0;         // counts backward passes (RunCtx::pass)
  int data_node_ = -1;             // the node of the last backward_data_node, until another call
  bool reuse_ = false;             // reuse_frozen_weights
  std::uint64_t reuse_epoch_ = 1;  // RunCtx::reuse_epoch while reuse_ is on
  bool training_ = true;           // mode of the last forward, which backward repeats
};

}  // namespace elastic
