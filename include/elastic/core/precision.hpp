// The number format a graph computes in. fp32 everywhere, or bf16 as
// torch.autocast(device_type="cpu", dtype=torch.bfloat16) computes:
// convolutions, linear layers and attention products multiply bf16 values
// and accumulate in fp32; the activations between layers (and their
// gradients) are stored in bf16; master weights, the gradients handed to the
// optimizer, optimizer state, batch-norm statistics and the loss stay fp32.
// A layer has one code path: the data type of its input's memory descriptor
// says which format it computes in (the graph's input node sets it).
#pragma once

#include <string>
#include <string_view>

#include <oneapi/dnnl/dnnl.hpp>

#include "elastic/core/error.hpp"

namespace elastic {

enum class Precision { fp32, bf16 };

inline std::string_view to_string(Precision p) { return p == Precision::bf16 ? "bf16" : "fp32"; }

// "fp32" or "bf16"; `flag` names the option in the error.
inline Precision parse_precision(std::string_view text, std::string_view flag = "--precision") {
  if (text == "fp32") return Precision::fp32;
  if (text == "bf16") return Precision::bf16;
  usage_fail("{}: '{}' is not one of fp32, bf16", flag, text);
}

// The type activations are stored in.
inline dnnl::memory::data_type activation_type(Precision p) {
  return p == Precision::bf16 ? dnnl::memory::data_type::bf16 : dnnl::memory::data_type::f32;
}

// Why this CPU cannot train in `p` (empty when it can), for oneDNN's
// effective ISA `isa`; `subject` names what asked for it (the command-line
// flag, or a graph). bf16 needs native bf16 dot products: oneDNN emulates bf16
// on plain AVX-512, slower than fp32, so emulation does not count.
inline std::string precision_unsupported(Precision p, dnnl::cpu_isa isa,
                                         std::string_view subject = "--precision bf16") {
  if (p == Precision::fp32) return {};
  using isa_t = dnnl::cpu_isa;
  if (isa == isa_t::avx512_core_bf16 || isa == isa_t::avx512_core_amx) return {};
  return fmt::format(
      "{} needs a CPU with native bf16 dot products (the x86 flag avx512_bf16, as on Intel Cooper Lake and "
      "Sapphire Rapids or AMD Zen 4); this CPU lacks it, and oneDNN's emulation is slower than fp32",
      subject);
}

// Whether this CPU can run `p`.
inline bool precision_supported(Precision p) { return precision_unsupported(p, dnnl::get_effective_cpu_isa()).empty(); }

// Refuses `p` on a CPU that cannot run it (a usage error: the flag, or the
// caller's choice of precision, is at fault).
inline void require_precision(Precision p, std::string_view subject = "--precision bf16") {
  const std::string why = precision_unsupported(p, dnnl::get_effective_cpu_isa(), subject);
  if (!why.empty()) usage_fail("{}", why);
}

}  // namespace elastic
