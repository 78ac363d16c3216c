// CPUID leaf 1 / leaf 7 feature bits and XGETBV OS-support checks; see cpu-features.h.
#include "core/cpu-features.h"

#include <cpuid.h>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace lc {

namespace {

uint64_t read_xcr0() {
    uint32_t eax, edx;
    __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
    return (uint64_t(edx) << 32) | eax;
}

cpu_features detect() {
    cpu_features f;
    unsigned     a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return f;
    const bool osxsave = c & (1u << 27);
    const bool has_avx = c & (1u << 28);
    const bool has_fma = c & (1u << 12);
    const bool has_f16 = c & (1u << 29);
    if (!osxsave || !has_avx) return f;
    const uint64_t xcr0   = read_xcr0();
    const bool     os_ymm = (xcr0 & 0x6) == 0x6;   // SSE + AVX state
    const bool     os_zmm = (xcr0 & 0xe6) == 0xe6; // + opmask, ZMM_Hi256, Hi16_ZMM
    if (!os_ymm) return f;
    f.fma  = has_fma;
    f.f16c = has_f16;
    if (__get_cpuid_max(0, nullptr) < 7) return f;
    __cpuid_count(7, 0, a, b, c, d);
    f.avx2 = b & (1u << 5);
    if (os_zmm) {
        f.avx512f    = b & (1u << 16);
        f.avx512dq   = f.avx512f && (b & (1u << 17));
        f.avx512bw   = f.avx512f && (b & (1u << 30));
        f.avx512vl   = f.avx512f && (b & (1u << 31));
        f.avx512vnni = f.avx512f && (c & (1u << 11));
        unsigned a1, b1, c1, d1;
        __cpuid_count(7, 1, a1, b1, c1, d1);
        f.avx512bf16 = f.avx512f && (a1 & (1u << 5));
    }
    return f;
}

#ifdef LC_HAVE_AVX512_KERNELS
constexpr bool k_avx512_built = true;
#else
constexpr bool k_avx512_built = false;
#endif

} // namespace

const cpu_features & cpu_features_get() {
    static const cpu_features f = detect();
    return f;
}

const char * cpu_isa_name(cpu_isa isa) {
    switch (isa) {
    case cpu_isa::AVX2:
        return "avx2";
    case cpu_isa::AVX512:
        return "avx512";
    }
    return "unknown";
}

bool cpu_isa_available(cpu_isa isa) {
    const cpu_features & f = cpu_features_get();
    switch (isa) {
    case cpu_isa::AVX2:
        return f.avx2 && f.fma && f.f16c;
    case cpu_isa::AVX512:
        return k_avx512_built && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq;
    }
    return false;
}

cpu_isa cpu_isa_select(const cpu_features & f, bool avx512_built, const char * no_avx512_env) {
    const bool env_off = no_avx512_env && no_avx512_env[0] != '\0' && std::strcmp(no_avx512_env, "0") != 0;
    if (avx512_built && !env_off && f.avx512f && f.avx512bw && f.avx512vl && f.avx512dq) return cpu_isa::AVX512;
    return cpu_isa::AVX2;
}

cpu_isa cpu_isa_best() {
    static const cpu_isa isa = cpu_isa_select(cpu_features_get(), k_avx512_built, std::getenv("LONGCTX_NO_AVX512"));
    return isa;
}

} // namespace lc
