// Denormal (subnormal) floats: values below 2^-126 in magnitude. x86 cores
// compute with them through microcode assists, tens to hundreds of cycles per
// operation, so a training run whose weights, gradients or optimizer slots
// drift into that range slows down. Flushing them (x86 MXCSR FTZ: results
// flushed to zero, DAZ: inputs read as zero; Arm FPCR.FZ does both) costs
// nothing measurable in accuracy for training, and Context turns it on for
// every kernel thread; the data loader's threads copy their creator's setting.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

namespace elastic {

#if defined(__x86_64__) || defined(__i386__)
inline constexpr unsigned kFlushBits = 0x8040;  // MXCSR bit 15 (FTZ) and bit 6 (DAZ)
#endif

// Turns flushing of denormals on or off for the calling thread.
inline void set_flush_denormals(bool on) {
#if defined(__x86_64__) || defined(__i386__)
  const unsigned csr = _mm_getcsr();
  _mm_setcsr(on ? (csr | kFlushBits) : (csr & ~kFlushBits));
#elif defined(__aarch64__)
  std::uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  fpcr = on ? (fpcr | (std::uint64_t{1} << 24)) : (fpcr & ~(std::uint64_t{1} << 24));
  __asm__ __volatile__("msr fpcr, %0" : : "r"(fpcr));
#else
  (void)on;
#endif
}

// Whether the calling thread flushes denormals (both FTZ and DAZ on x86).
inline bool flushing_denormals() {
#if defined(__x86_64__) || defined(__i386__)
  return (_mm_getcsr() & kFlushBits) == kFlushBits;
#elif defined(__aarch64__)
  std::uint64_t fpcr;
  __asm__ __volatile__("mrs %0, fpcr" : "=r"(fpcr));
  return (fpcr >> 24) & 1;
#else
  return false;
#endif
}

// How many values of `v` are denormal (nonzero and below the smallest normal float).
inline std::int64_t count_denormals(std::span<const float> v) {
  std::int64_t n = 0;
  for (float x : v) n += std::fpclassify(x) == FP_SUBNORMAL;
  return n;
}

}  // namespace elastic
