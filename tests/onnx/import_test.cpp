#include "elastic/onnx/import.hpp"

#include <filesystem>
#include <fstream>

#include <doctest/doctest.h>

#include "elastic/core/random.hpp"
#include "elastic/testing/gradcheck.hpp"

// One namespace per test file: the tests of a directory build as one translation unit.
namespace onnx_import_test {

using namespace elastic;
using testing::max_abs;
using testing::max_abs_diff;
namespace fs = std::filesystem;

namespace {

// ONNX models written by the test with protobuf: a small classifier
// conv -> batch norm -> relu -> max pool -> global average pool -> flatten -> gemm.
struct Builder {
  ::onnx::ModelProto m;
  Rng rng{5};

  Builder() {
    m.set_ir_version(8);
    m.add_opset_import()->set_version(14);
    auto* in = m.mutable_graph()->add_input();
    in->set_name("x");
    auto* shape = in->mutable_type()->mutable_tensor_type();
    shape->set_elem_type(::onnx::TensorProto::FLOAT);
    for (auto d : {std::string("batch"), std::string("3"), std::string("h"), std::string("w")}) {
      auto* dim = shape->mutable_shape()->add_dim();
      if (d == "3")
        dim->set_dim_value(3);
      else
        dim->set_dim_param(d);
    }
    m.mutable_graph()->set_name("test");
  }

  std::vector<float> init(const std::string& name, const std::vector<std::int64_t>& dims, float lo = -0.5f,
                          float hi = 0.5f) {
    auto* t = m.mutable_graph()->add_initializer();
    t->set_name(name);
    t->set_data_type(::onnx::TensorProto::FLOAT);
    std::int64_t n = 1;
    for (auto d : dims) {
      t->add_dims(d);
      n *= d;
    }
    std::vector<float> v(static_cast<std::size_t>(n));
    for (auto& x : v) x = rng.uniform(lo, hi);
    t->set_raw_data(std::string(reinterpret_cast<const char*>(v.data()), v.size() * 4));
    return v;
  }

  ::onnx::NodeProto* node(const std::string& op, const std::string& name, std::vector<std::string> in,
                          std::vector<std::string> out) {
    auto* n = m.mutable_graph()->add_node();
    n->set_op_type(op);
    n->set_name(name);
    for (auto& i : in) n->add_input(i);
    for (auto& o : out) n->add_output(o);
    return n;
  }

  static void ints(::onnx::NodeProto* n, const std::string& name, std::vector<std::int64_t> v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INTS);
    for (auto x : v) a->add_ints(x);
  }
  static void integer(::onnx::NodeProto* n, const std::string& name, std::int64_t v) {
    auto* a = n->add_attribute();
    a->set_name(name);
    a->set_type(::onnx::AttributeProto::INT);
    a->set_i(v);
  }

  void output(const std::string& name) {
    auto* o = m.mutable_graph()->add_output();
    o->set_name(name);
    auto* type = o->mutable_type()->mutable_tensor_type();
    type->set_elem_type(::onnx::TensorProto::FLOAT);
    type->mutable_shape()->add_dim()->set_dim_param("batch");
    type->mutable_shape()->add_dim()->set_dim_value(5);
  }

  fs::path write(const std::string& file) const {
    const fs::path p = fs::temp_directory_path() / file;
    std::ofstream(p, std::ios::binary) << m.SerializeAsString();
    return p;
  }
};

// The small classifier; `trans_b` 0 stores the head's weight as (in, out).
Builder small_classifier(int trans_b = 1, std::vector<std::int64_t> conv_pads = {1, 1, 1, 1}) {
  Builder b;
  b.init("conv.weight", {4, 3, 3, 3});
  b.init("conv.bias", {4});
  b.init("bn.weight", {4}, 0.5f, 1.5f);
  b.init("bn.bias", {4});
  b.init("bn.running_mean", {4});
  b.init("bn.running_var", {4}, 0.5f, 1.5f);
  b.init("fc.weight", trans_b ? std::vector<std::int64_t>{5, 4} : std::vector<std::int64_t>{4, 5});
  b.init("fc.bias", {5});
  auto* c = b.node("Conv", "/conv/Conv", {"x", "conv.weight", "conv.bias"}, {"c"});
  Builder::ints(c, "kernel_shape", {3, 3});
  Builder::ints(c, "pads", conv_pads);
  b.node("BatchNormalization", "/bn/BatchNormalization",
         {"c", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}, {"n"});
  b.node("Relu", "/relu/Relu", {"n"}, {"r"});
  auto* p = b.node("MaxPool", "/pool/MaxPool", {"r"}, {"p"});
  Builder::ints(p, "kernel_shape", {2, 2});
  Builder::ints(p, "strides", {2, 2});
  b.node("GlobalAveragePool", "/gap/GlobalAveragePool", {"p"}, {"g"});
  auto* f = b.node("Flatten", "/Flatten", {"g"}, {"f"});
  Builder::integer(f, "axis", 1);
  auto* gemm = b.node("Gemm", "/fc/Gemm", {"f", "fc.weight", "fc.bias"}, {"logits"});
  Builder::integer(gemm, "transB", trans_b);
  b.output("logits");
  return b;
}

Tensor random_images(const Shape& s, std::uint64_t seed) {
  Rng rng(seed);
  Tensor x(s);
  for (auto& v : x.span()) v = rng.normal();
  return x;
}

std::string error_of(const fs::path& p, const ModelOptions& o = {.num_classes = 5, .input_size = 8, .batch = 2}) {
  Context ctx(1);
  try {
    onnx_import::import_model(p, ctx, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

// The small classifier's layers after its activation, built by hand: pool, global
// average pool, linear head. Returns the logits.
ValueId small_tail(Graph& h, ValueId v) {
  v = h.add<MaxPool2d>({v}, "pool", PoolOptions{.kernel_h = 2, .kernel_w = 2, .stride_h = 2, .stride_w = 2});
  v = h.add<GlobalAvgPool>({v}, "gap");
  return h.add<Linear>({v}, "fc", LinearOptions{.in_features = 4, .out_features = 5});
}

// Logits of the imported model and of the hand-built graph (input x, logits y) on `images`.
std::pair<Tensor, Tensor> both_logits(Model& m, Graph& h, ValueId x, ValueId y, const Tensor& images) {
  m.graph->write(m.images, images);
  h.write(x, images);
  m.graph->forward(false);
  h.forward(false);
  return {m.graph->read(m.logits), h.read(y)};
}

// Copies the imported model's params and buffers into the hand-built graph's of the same names.
void copy_values(Model& m, Graph& h) {
  for (auto& q : h.params().params()) {
    const int k = m.params().find(q.name);
    REQUIRE(k >= 0);
    const auto from = m.params()[std::size_t(k)].values();
    std::copy(from.begin(), from.end(), q.values().begin());
  }
  for (auto& q : h.params().buffers()) {
    const int k = m.params().find_buffer(q.name);
    REQUIRE(k >= 0);
    const auto from = m.params().buffer(std::size_t(k)).values();
    std::copy(from.begin(), from.end(), q.values().begin());
  }
}

}  // namespace

TEST_CASE("an imported ONNX classifier computes what the same layers built by hand compute, with the file's weights") {
  const Builder b = small_classifier();
  const fs::path p = b.write("elastic_import_small.onnx");
  Context ctx(2);
  const ModelOptions o{.num_classes = 5, .input_size = 8, .batch = 3};
  onnx_import::ImportReport report;
  Model m = onnx_import::import_model(p, ctx, o, {}, &report);
  CHECK(report.head == "fc");
  CHECK_FALSE(report.head_replaced);
  CHECK(report.nodes == 7);
  CHECK(m.input_shape == Shape{3, 3, 8, 8});
  CHECK(m.num_classes == 5);
  CHECK(m.head_prefixes.empty());
  CHECK(m.batch_norms.size() == 1);
  // The Relu that alone reads the batch norm's output runs inside the batch norm node.
  CHECK(m.graph->node_as<BatchNorm2d>(m.batch_norms[0]).activation() == Activation::relu);
  for (std::size_t v = 0; v < m.graph->size(); ++v) CHECK(m.graph->node(ValueId(v)).type() != "relu");
  // Params and buffers under the file's names, holding the file's values.
  const auto& g = b.m.graph();
  std::map<std::string, std::vector<float>> file;
  for (const auto& t : g.initializer()) {
    std::vector<float> v(t.raw_data().size() / 4);
    std::memcpy(v.data(), t.raw_data().data(), t.raw_data().size());
    file[t.name()] = v;
  }
  std::vector<std::string> names;
  for (auto& q : m.params().params()) {
    names.push_back(q.name);
    REQUIRE(file.count(q.name));
    CHECK(std::vector<float>(q.values().begin(), q.values().end()) == file[q.name]);
  }
  CHECK(names == std::vector<std::string>{"conv.weight", "conv.bias", "bn.weight", "bn.bias", "fc.weight", "fc.bias"});
  for (auto& q : m.params().buffers())
    CHECK(std::vector<float>(q.values().begin(), q.values().end()) == file.at(q.name));

  // The same network built from the engine's layers with the same values.
  Graph h(ctx);
  const ValueId x = h.input("x", {3, 3, 8, 8});
  ValueId v = h.add<Conv2d>(
      {x}, "conv", Conv2dOptions{.in_channels = 3, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  v = h.add<BatchNorm2d>({v}, "bn", BatchNorm2dOptions{.num_features = 4});
  v = h.add<Eltwise>({v}, "relu", Activation::relu);
  const ValueId y = small_tail(h, v);
  h.finalize(1);
  for (auto& q : h.params().params()) std::copy(file[q.name].begin(), file[q.name].end(), q.values().begin());
  for (auto& q : h.params().buffers()) std::copy(file[q.name].begin(), file[q.name].end(), q.values().begin());
  const auto [a, e] = both_logits(m, h, x, y, random_images({3, 3, 8, 8}, 9));
  REQUIRE(a.shape() == e.shape());
  const double worst = max_abs_diff(a, e), scale = max_abs(e);
  CHECK(worst == 0.0);
  CHECK(scale > 1e-3);  // not a vacuous comparison
  fs::remove(p);
}

// A residual join: the Relu after an Add that nothing else reads runs inside the add node,
// and the imported network computes what the two nodes compute.
TEST_CASE("a Relu that alone reads an Add's output is fused into the add") {
  Builder b = small_classifier();
  auto* nodes = b.m.mutable_graph()->mutable_node();
  for (auto& n : *nodes)
    if (n.op_type() == "Relu") n.set_input(0, "s");
  b.node("Add", "/join/Add", {"n", "c"}, {"s"});
  // Nodes in topological order: the Add before the Relu that reads it.
  std::rotate(nodes->begin() + 2, nodes->end() - 1, nodes->end());
  const fs::path p = b.write("elastic_import_add_relu.onnx");
  Context ctx(2);
  Model m = onnx_import::import_model(p, ctx, {.num_classes = 5, .input_size = 8, .batch = 2});
  int adds = 0;
  for (std::size_t v = 0; v < m.graph->size(); ++v) {
    CHECK(m.graph->node(ValueId(v)).type() != "relu");
    if (m.graph->node(ValueId(v)).type() != "add") continue;
    ++adds;
    CHECK(m.graph->node_as<Add>(ValueId(v)).activation() == Activation::relu);
  }
  CHECK(adds == 1);
  CHECK_FALSE(m.graph->node_as<BatchNorm2d>(m.batch_norms[0]).activation().has_value());

  Graph h(ctx);
  const ValueId x = h.input("x", {2, 3, 8, 8});
  const ValueId c = h.add<Conv2d>(
      {x}, "conv", Conv2dOptions{.in_channels = 3, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  const ValueId n = h.add<BatchNorm2d>({c}, "bn", BatchNorm2dOptions{.num_features = 4});
  const ValueId r = h.add<Eltwise>({h.add<Add>({n, c}, "join")}, "relu", Activation::relu);
  const ValueId y = small_tail(h, r);
  h.finalize(1);
  copy_values(m, h);
  const auto [a, e] = both_logits(m, h, x, y, random_images({2, 3, 8, 8}, 6));
  const double worst = max_abs_diff(a, e), scale = max_abs(e);
  CHECK(worst == 0.0);
  CHECK(scale > 1e-3);
  fs::remove(p);
}

// The same join read a second time under another name (an Identity's output): the Relu
// stays a node of its own.
TEST_CASE("a Relu is not fused into an add whose output another node reads under another name") {
  Builder b = small_classifier();
  auto* nodes = b.m.mutable_graph()->mutable_node();
  for (auto& n : *nodes) {
    if (n.op_type() == "Relu") n.set_input(0, "t");
    if (n.op_type() == "MaxPool") n.set_input(0, "u");
  }
  b.node("Add", "/join/Add", {"n", "c"}, {"s"});
  b.node("Identity", "/same/Identity", {"s"}, {"t"});
  b.node("Add", "/again/Add", {"r", "s"}, {"u"});
  // Nodes in topological order: conv, bn, join, identity, relu, again, pool, ...
  std::rotate(nodes->begin() + 2, nodes->end() - 3, nodes->end() - 1);
  std::rotate(nodes->begin() + 5, nodes->end() - 1, nodes->end());
  const fs::path p = b.write("elastic_import_add_identity.onnx");
  Context ctx(2);
  Model m = onnx_import::import_model(p, ctx, {.num_classes = 5, .input_size = 8, .batch = 2});
  int relus = 0;
  for (std::size_t v = 0; v < m.graph->size(); ++v) {
    relus += m.graph->node(ValueId(v)).type() == "relu";
    if (m.graph->node(ValueId(v)).type() == "add")
      CHECK_FALSE(m.graph->node_as<Add>(ValueId(v)).activation().has_value());
  }
  CHECK(relus == 1);

  Graph h(ctx);
  const ValueId x = h.input("x", {2, 3, 8, 8});
  const ValueId c = h.add<Conv2d>(
      {x}, "conv", Conv2dOptions{.in_channels = 3, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  const ValueId n = h.add<BatchNorm2d>({c}, "bn", BatchNorm2dOptions{.num_features = 4});
  const ValueId s = h.add<Add>({n, c}, "join");
  const ValueId r = h.add<Eltwise>({s}, "relu", Activation::relu);
  const ValueId y = small_tail(h, h.add<Add>({r, s}, "again"));
  h.finalize(1);
  copy_values(m, h);
  const auto [a, e] = both_logits(m, h, x, y, random_images({2, 3, 8, 8}, 7));
  const double worst = max_abs_diff(a, e);
  CHECK(worst == 0.0);
  fs::remove(p);
}

// A batch norm output that another node reads as well keeps its own value: the Relu
// stays a node of its own (fused, the Add would read the activated value).
TEST_CASE("a Relu is not fused into a batch norm whose output another node reads") {
  Builder b = small_classifier();
  auto* nodes = b.m.mutable_graph()->mutable_node();
  for (auto& n : *nodes)
    if (n.op_type() == "MaxPool") n.set_input(0, "s");
  b.node("Add", "/skip/Add", {"r", "n"}, {"s"});
  // Nodes in topological order: the Add before the MaxPool that reads it.
  std::rotate(nodes->begin() + 3, nodes->end() - 1, nodes->end());
  const fs::path p = b.write("elastic_import_shared_bn.onnx");
  Context ctx(2);
  Model m = onnx_import::import_model(p, ctx, {.num_classes = 5, .input_size = 8, .batch = 2});
  CHECK_FALSE(m.graph->node_as<BatchNorm2d>(m.batch_norms[0]).activation().has_value());

  Graph h(ctx);
  const ValueId x = h.input("x", {2, 3, 8, 8});
  ValueId c = h.add<Conv2d>(
      {x}, "conv", Conv2dOptions{.in_channels = 3, .out_channels = 4, .kernel_h = 3, .kernel_w = 3, .padding = 1});
  const ValueId n = h.add<BatchNorm2d>({c}, "bn", BatchNorm2dOptions{.num_features = 4});
  const ValueId r = h.add<Eltwise>({n}, "relu", Activation::relu);
  const ValueId y = small_tail(h, h.add<Add>({r, n}, "skip"));
  h.finalize(1);
  copy_values(m, h);
  const auto [a, e] = both_logits(m, h, x, y, random_images({2, 3, 8, 8}, 4));
  const double worst = max_abs_diff(a, e);
  CHECK(worst < 1e-6);
  fs::remove(p);
}

TEST_CASE("a Gemm with transB 0 holds its weight transposed: imported, it computes the same logits") {
  Builder t1 = small_classifier(1), t0 = small_classifier(0);
  // t0's head weight: t1's transposed.
  const auto& w1 = t1.m.graph().initializer(6);
  auto* w0 = t0.m.mutable_graph()->mutable_initializer(6);
  REQUIRE(w1.name() == "fc.weight");
  std::vector<float> a(20), b(20);
  std::memcpy(a.data(), w1.raw_data().data(), 80);
  for (int o = 0; o < 5; ++o)
    for (int i = 0; i < 4; ++i) b[std::size_t(i * 5 + o)] = a[std::size_t(o * 4 + i)];
  w0->set_raw_data(std::string(reinterpret_cast<const char*>(b.data()), 80));
  for (int k = 0; k < 6; ++k) *t0.m.mutable_graph()->mutable_initializer(k) = t1.m.graph().initializer(k);
  *t0.m.mutable_graph()->mutable_initializer(7) = t1.m.graph().initializer(7);
  const fs::path p1 = t1.write("elastic_import_t1.onnx"), p0 = t0.write("elastic_import_t0.onnx");
  Context ctx(2);
  const ModelOptions o{.num_classes = 5, .input_size = 8, .batch = 2};
  Model m1 = onnx_import::import_model(p1, ctx, o), m0 = onnx_import::import_model(p0, ctx, o);
  const Tensor images = random_images({2, 3, 8, 8}, 4);
  for (Model* m : {&m1, &m0}) {
    m->graph->write(m->images, images);
    m->graph->forward(false);
  }
  const Tensor y1 = m1.graph->read(m1.logits), y0 = m0.graph->read(m0.logits);
  for (std::int64_t i = 0; i < y1.numel(); ++i) CHECK(y1[i] == y0[i]);
  fs::remove(p1);
  fs::remove(p0);
}

TEST_CASE("a different class count re-creates the classifier, which is not loaded from the file") {
  const fs::path p = small_classifier().write("elastic_import_head.onnx");
  Context ctx(1);
  onnx_import::ImportReport r;
  Model m = onnx_import::import_model(p, ctx, {.num_classes = 9, .input_size = 8, .batch = 2}, {}, &r);
  CHECK(r.head_replaced);
  CHECK(r.file_classes == 5);
  CHECK(m.num_classes == 9);
  CHECK(m.head_prefixes == std::vector<std::string>{"fc."});
  CHECK(m.params().params().back().shape == Shape{9});
  // --head naming a layer that is not a Gemm is refused, naming it.
  const std::string e = [&] {
    try {
      onnx_import::import_model(p, ctx, {.num_classes = 9, .input_size = 8, .batch = 2}, {.head = "conv"});
    } catch (const Error& err) {
      return std::string(err.what());
    }
    return std::string();
  }();
  CHECK(e.find("no Gemm or MatMul named 'conv'") != std::string::npos);
  fs::remove(p);
}

TEST_CASE("a MatMul classifier with its bias Add is kept, or re-created for another class count") {
  Builder b = small_classifier(0);  // fc.weight stored (in, out), as MatMul reads it
  auto* g = b.m.mutable_graph();
  auto* head = g->mutable_node(g->node_size() - 1);
  head->set_op_type("MatMul");
  head->clear_attribute();
  head->mutable_input()->RemoveLast();  // the bias moves to an Add
  head->set_output(0, "mm");
  b.node("Add", "/fc/Add", {"mm", "fc.bias"}, {"logits"});
  const fs::path p = b.write("elastic_import_matmul.onnx");
  Context ctx(1);
  onnx_import::ImportReport r;
  Model kept = onnx_import::import_model(p, ctx, {.num_classes = 5, .input_size = 8, .batch = 2}, {}, &r);
  CHECK(r.head == "fc");
  CHECK_FALSE(r.head_replaced);
  CHECK(kept.params().params().back().name == "fc.bias");
  CHECK(kept.params().params()[kept.params().size() - 2].shape == Shape{5, 4});  // (out, in)
  Model grown = onnx_import::import_model(p, ctx, {.num_classes = 9, .input_size = 8, .batch = 2}, {}, &r);
  CHECK(r.head_replaced);
  CHECK(r.file_classes == 5);
  CHECK(grown.num_classes == 9);
  CHECK(grown.head_prefixes == std::vector<std::string>{"fc."});
  fs::remove(p);
}

TEST_CASE("a softmax at the output is left out: the model's outputs are the logits before it") {
  Builder plain = small_classifier(), with_softmax = small_classifier();
  auto* g = with_softmax.m.mutable_graph();
  g->mutable_node(g->node_size() - 1)->set_output(0, "z");
  with_softmax.node("Softmax", "/softmax", {"z"}, {"logits"});
  const fs::path p0 = plain.write("elastic_import_plain.onnx"), p1 = with_softmax.write("elastic_import_softmax.onnx");
  Context ctx(1);
  onnx_import::ImportReport r0, r1;
  Model m0 = onnx_import::import_model(p0, ctx, {.num_classes = 5, .input_size = 8, .batch = 2}, {}, &r0);
  Model m1 = onnx_import::import_model(p1, ctx, {.num_classes = 5, .input_size = 8, .batch = 2}, {}, &r1);
  CHECK_FALSE(r0.dropped_softmax);
  CHECK(r1.dropped_softmax);
  CHECK(r1.head == "fc");
  const Tensor images = random_images({2, 3, 8, 8}, 6);
  for (Model* m : {&m0, &m1}) {
    m->graph->write(m->images, images);
    m->graph->forward(false);
  }
  const Tensor y0 = m0.graph->read(m0.logits), y1 = m1.graph->read(m1.logits);
  bool same = true;
  for (std::int64_t i = 0; i < y0.numel(); ++i) same &= y0[i] == y1[i];
  CHECK(same);
  // Another class count re-creates the classifier before the softmax.
  onnx_import::import_model(p1, ctx, {.num_classes = 7, .input_size = 8, .batch = 2}, {}, &r1);
  CHECK(r1.head_replaced);
  fs::remove(p0);
  fs::remove(p1);
}

TEST_CASE("the graph hash identifies the graph, not its weights or file name") {
  Builder a = small_classifier(), b = small_classifier();
  b.m.mutable_graph()->mutable_initializer(0)->mutable_raw_data()->at(0) ^= 1;  // other weights
  Builder c = small_classifier(1, {1, 1, 1, 1});
  Builder::ints(c.m.mutable_graph()->mutable_node(3), "pads", {0, 0, 0, 0});  // another graph
  Builder d = small_classifier(1, {0, 0, 0, 0});  // only an attribute's value differs: the conv's pads
  const fs::path pa = a.write("elastic_hash_a.onnx"), pb = b.write("elastic_hash_b.onnx"),
                 pc = c.write("elastic_hash_c.onnx"), pd = d.write("elastic_hash_d.onnx");
  Context ctx(1);
  const ModelOptions o{.num_classes = 5, .input_size = 8, .batch = 2};
  onnx_import::ImportReport ra, rb, rc, rd;
  onnx_import::import_model(pa, ctx, o, {}, &ra);
  onnx_import::import_model(pb, ctx, o, {}, &rb);
  onnx_import::import_model(pc, ctx, o, {}, &rc);
  onnx_import::import_model(pd, ctx, o, {}, &rd);
  CHECK(ra.graph_hash == rb.graph_hash);
  CHECK(ra.graph_hash != rc.graph_hash);
  CHECK(ra.graph_hash != rd.graph_hash);
  CHECK(rc.graph_hash != rd.graph_hash);
  for (const auto& p : {pa, pb, pc, pd}) fs::remove(p);
}

TEST_CASE("shape arithmetic two Reshapes deep (opset 16, Shape with start and end) is computed at import") {
  // The small classifier with its Flatten written as exporters write it: the
  // batch from Shape(start 0, end 1), a Reshape to (batch, -1), then a Reshape
  // to its own output's Shape, which is known only once the first is resolved.
  const Builder plain = small_classifier();
  Builder b = small_classifier();
  b.m.mutable_opset_import(0)->set_version(16);
  auto* minus_one = b.m.mutable_graph()->add_initializer();
  minus_one->set_name("minus_one");
  minus_one->set_data_type(::onnx::TensorProto::INT64);
  minus_one->add_dims(1);
  const std::int64_t m1 = -1;
  minus_one->set_raw_data(std::string(reinterpret_cast<const char*>(&m1), sizeof m1));
  const auto nodes = b.m.graph().node();
  b.m.mutable_graph()->clear_node();
  for (const auto& n : nodes) {
    if (n.op_type() != "Flatten") {
      *b.m.mutable_graph()->add_node() = n;
      continue;
    }
    auto* shape = b.node("Shape", "/chain/Shape", {"g"}, {"batch"});
    Builder::integer(shape, "start", 0);
    Builder::integer(shape, "end", 1);
    Builder::integer(b.node("Concat", "/chain/Concat", {"batch", "minus_one"}, {"flat_shape"}), "axis", 0);
    b.node("Reshape", "/chain/Reshape", {"g", "flat_shape"}, {"flat"});
    b.node("Shape", "/chain/Shape_1", {"flat"}, {"flat_dims"});
    b.node("Reshape", "/chain/Reshape_1", {"flat", "flat_dims"}, {"f"});
  }
  Context ctx(1);
  const ModelOptions o{.num_classes = 5, .input_size = 8, .batch = 2};
  Model a = onnx_import::import_model(plain.write("elastic_import_plain.onnx"), ctx, o);
  Model c = onnx_import::import_model(b.write("elastic_import_chain.onnx"), ctx, o);
  const Tensor images = random_images({2, 3, 8, 8}, 17);
  Tensor logits[2];
  for (int k = 0; k < 2; ++k) {
    Model& m = k ? c : a;
    m.graph->write(m.images, images);
    m.graph->forward(false);
    logits[k] = m.graph->read(m.logits);
  }
  REQUIRE(logits[1].numel() == 10);
  CHECK(max_abs_diff(logits[0], logits[1]) == 0.0);
  CHECK(max_abs(logits[0]) > 0.0);
}

TEST_CASE("bad ONNX input is refused with one line naming the file and the node") {
  SUBCASE("an unsupported operator names itself, its node and the supported operators") {
    Builder b = small_classifier();
    b.m.mutable_graph()->mutable_node(2)->set_op_type("Selu");
    const std::string e = error_of(b.write("elastic_import_op.onnx"));
    CHECK(e.find("node '/relu/Relu' has operator Selu, which is not supported") != std::string::npos);
    CHECK(e.find("supported: Add, AveragePool") != std::string::npos);
    CHECK(e.find("elastic_import_op.onnx") != std::string::npos);
  }
  SUBCASE("asymmetric padding") {
    const std::string e = error_of(small_classifier(1, {1, 1, 0, 0}).write("elastic_import_pads.onnx"));
    CHECK(e.find("node '/conv/Conv' (Conv): pads [1, 1, 0, 0] are not symmetric") != std::string::npos);
  }
  SUBCASE("a file that is not protobuf") {
    const fs::path p = fs::temp_directory_path() / "elastic_import_text.onnx";
    std::ofstream(p) << "this is not a model\n";
    CHECK(error_of(p).find("elastic_import_text.onnx': not an ONNX model") != std::string::npos);
  }
  SUBCASE("a truncated file") {
    const std::string bytes = small_classifier().m.SerializeAsString();
    const fs::path p = fs::temp_directory_path() / "elastic_import_cut.onnx";
    std::ofstream(p, std::ios::binary) << bytes.substr(0, bytes.size() / 2);
    CHECK(error_of(p).find("elastic_import_cut.onnx'") != std::string::npos);
  }
  SUBCASE("a missing file") {
    CHECK(error_of("/nonexistent/model.onnx").find("'/nonexistent/model.onnx': cannot read") != std::string::npos);
  }
  SUBCASE("weights as external data") {
    Builder b = small_classifier();
    auto* t = b.m.mutable_graph()->mutable_initializer(0);
    t->clear_raw_data();
    t->set_data_location(::onnx::TensorProto::EXTERNAL);
    auto* entry = t->add_external_data();
    entry->set_key("location");
    entry->set_value("weights.bin");
    const std::string e = error_of(b.write("elastic_import_ext.onnx"));
    CAPTURE(e);
    CHECK(e.find("tensor 'conv.weight' is stored as external data") != std::string::npos);
  }
  SUBCASE("an initializer whose data does not fit its dims") {
    Builder b = small_classifier();
    b.m.mutable_graph()->mutable_initializer(1)->mutable_raw_data()->resize(8);
    const std::string e = error_of(b.write("elastic_import_short.onnx"));
    CHECK(e.find("tensor 'conv.bias' holds 2 values for dims 4") != std::string::npos);
  }
  SUBCASE("a Shape of a value ONNX cannot infer is refused, naming the node at fault, not a crash") {
    // From opset 15 on, ONNX 1.12's data propagation through Shape reads its
    // input's type unchecked; the Transpose's failed inference leaves none.
    Builder b = small_classifier();
    b.m.mutable_opset_import(0)->set_version(16);
    auto* t = b.node("Transpose", "/bad/Transpose", {"r"}, {"t"});
    Builder::ints(t, "perm", {0, 2, 9, 1});
    b.node("Shape", "/bad/Shape", {"t"}, {"s"});
    const std::string e = error_of(b.write("elastic_import_infer.onnx"));
    CAPTURE(e);
    CHECK(e.find("elastic_import_infer.onnx': node '/bad/Transpose' (Transpose): Transpose with perm [0, 2, 9, 1]") !=
          std::string::npos);
  }
  SUBCASE("a graph input that is not an image") {
    Builder b = small_classifier();
    b.m.mutable_graph()
        ->mutable_input(0)
        ->mutable_type()
        ->mutable_tensor_type()
        ->mutable_shape()
        ->mutable_dim(1)
        ->set_dim_value(1);
    const std::string e = error_of(b.write("elastic_import_gray.onnx"));
    CHECK(e.find("input 'x' has 1 channels") != std::string::npos);
  }
}

}  // namespace onnx_import_test
