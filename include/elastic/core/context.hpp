// The oneDNN execution context: one CPU engine, one in-order stream and the
// thread count every kernel runs with. One Context serves a whole process.
#pragma once

#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/error.hpp"

namespace elastic {

class Context {
 public:
  // @param threads number of threads for oneDNN kernels; 0 = all cores.
  explicit Context(int threads = 0)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_) {
    set_threads(threads);
  }

  void set_threads(int threads) {
    if (threads < 0) usage_fail("--threads must be >= 0 (0 = all cores), got {}", threads);
    threads_ = threads == 0 ? omp_get_num_procs() : threads;
    omp_set_num_threads(threads_);
  }

  int threads() const { return threads_; }
  const dnnl::engine& engine() const { return engine_; }
  dnnl::stream& stream() { return stream_; }
  void wait() { stream_.wait(); }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  int threads_ = 1;
};

}  // namespace elastic
