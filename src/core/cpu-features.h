// Run-time CPU feature detection (CPUID + XGETBV) and the choice between the AVX2 and AVX-512 kernels.
// LONGCTX_NO_AVX512=1 in the environment forces the AVX2 kernels on an AVX-512 machine.
#pragma once

namespace lc {

struct cpu_features {
    bool avx2       = false;
    bool fma        = false;
    bool f16c       = false;
    bool avx512f    = false; // each avx512* flag also requires the OS to save the zmm and opmask state
    bool avx512bw   = false;
    bool avx512vl   = false;
    bool avx512dq   = false;
    bool avx512vnni = false;
    bool avx512bf16 = false;
};

// Detected once, on first call. Thread-safe.
const cpu_features & cpu_features_get();

inline bool cpu_has_avx512f() {
    return cpu_features_get().avx512f;
}
inline bool cpu_has_avx512bw() {
    return cpu_features_get().avx512bw;
}
inline bool cpu_has_avx512vl() {
    return cpu_features_get().avx512vl;
}
inline bool cpu_has_avx512vnni() {
    return cpu_features_get().avx512vnni;
}
inline bool cpu_has_avx512bf16() {
    return cpu_features_get().avx512bf16;
}

// Instruction sets of the CPU kernels, in increasing order of preference.
enum class cpu_isa { AVX2, AVX512 };

const char * cpu_isa_name(cpu_isa isa); // "avx2", "avx512"

// Whether this build contains kernels for `isa` and this CPU can run them (ignores the environment).
bool cpu_isa_available(cpu_isa isa);

// The choice rule, separated for tests: AVX-512 when the kernels are built, the CPU has F+BW+VL+DQ and
// no_avx512_env (the value of LONGCTX_NO_AVX512, nullptr when unset) is unset, empty or "0".
cpu_isa cpu_isa_select(const cpu_features & f, bool avx512_built, const char * no_avx512_env);

// The ISA kernels should use: cpu_isa_select() on this CPU and environment, evaluated once on first call.
cpu_isa cpu_isa_best();

} // namespace lc
