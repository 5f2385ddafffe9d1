// Function multi-versioning for the hand-vectorized kernels (fast conversions, the int4 quantizer): a function
// marked TREX_CLONES is built for x86-64, AVX2 and AVX-512 and the variant is chosen at load time. The loops are
// plain C++ (GCC / Clang vector extensions) either way; elsewhere, or under AddressSanitizer, it is one build.
#pragma once

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__)) && !defined(__SANITIZE_ADDRESS__)
#define TREX_CLONES __attribute__((target_clones("default", "avx2", "avx512f")))
#else
#define TREX_CLONES
#endif
