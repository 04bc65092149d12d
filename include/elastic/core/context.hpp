// The oneDNN execution context: one CPU engine, one in-order stream and the
// thread count every kernel runs with. One Context serves a whole process.
#pragma once

#include <omp.h>

#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/denormals.hpp"
#include "elastic/core/error.hpp"
#include "elastic/core/resident.hpp"

namespace elastic {

class Context {
 public:
  // @param threads number of threads for oneDNN kernels; 0 = all cores.
  // @param flush_denormals flush denormal floats to zero on the calling thread
  //   and every kernel thread (see denormals.hpp); off only to measure what it saves.
  // Also fixes glibc's malloc thresholds so that the kernels' per-call workspaces come
  // back on resident pages (reuse_kernel_workspaces in resident.hpp; process-wide, over
  // the process's own settings of them).
  explicit Context(int threads = 0, bool flush_denormals = true)
      : engine_(dnnl::engine::kind::cpu, 0), stream_(engine_), flush_denormals_(flush_denormals) {
    reuse_kernel_workspaces();
    set_threads(threads);
  }

  void set_threads(int threads) {
    if (threads < 0) usage_fail("--threads must be >= 0 (0 = all cores), got {}", threads);
    threads_ = threads == 0 ? omp_get_num_procs() : threads;
    omp_set_num_threads(threads_);
    // The floating-point mode is per thread: set it on this one and on each of
    // the OpenMP team's (threads created later copy it from this one).
    const bool flush = flush_denormals_;
    set_flush_denormals(flush);
#pragma omp parallel num_threads(threads_)
    set_flush_denormals(flush);
  }

  bool flushes_denormals() const { return flush_denormals_; }

  int threads() const { return threads_; }
  const dnnl::engine& engine() const { return engine_; }
  dnnl::stream& stream() { return stream_; }
  void wait() { stream_.wait(); }

 private:
  dnnl::engine engine_;
  dnnl::stream stream_;
  bool flush_denormals_ = true;
  int threads_ = 1;
};

}  // namespace elastic
