#include "passes/quantize_int4.h"

#include "passes/quantize.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "io/fast_convert.h"
#include "util/error.h"
#include "util/simd.h"

// Kernels built for several instruction sets (TREX_CLONES). This file is compiled with -ffp-contract=off
// (CMakeLists.txt), so no variant fuses a multiply-add and all of them give the reference's bits.

namespace trex {

namespace {

constexpr int kCodeMin = 0, kCodeMax = 15;  // 4-bit codes
constexpr int kSymmetricZero = 8;           // MatMulNBits' default zero point for 4 bits
constexpr float kClipStep = 0.015f;         // ratios 1.0, 0.985, ..., 0.7 (kInt4ClipSteps of them)
constexpr int kLanes = 8;                   // error sums are kept in 8 lanes (see int4_block_error)
constexpr int64_t kMaxBlock = 256;
constexpr double kGptqDamping = 0.1;       // of the mean Gram diagonal (random-token calibration: keep it high)

float clip_ratio(int i) { return 1.0f - kClipStep * static_cast<float>(i); }

// ---------------------------------------------------------------------------------------------------------
// The reference: one element at a time.

// The code of one value: x / scale shifted by the zero point, clamped to the 4-bit range, rounded half to even.
int reference_code(float x, float scale, int zero_point) {
  if (scale == 0.0f) return zero_point;  // an all-zero block: every value is the zero point
  float v = x / scale + static_cast<float>(zero_point);
  v = std::clamp(v, static_cast<float>(kCodeMin), static_cast<float>(kCodeMax));
  return static_cast<int>(round_half_even(v));
}

struct Choice {
  float scale = 0.0f;
  int zero_point = kSymmetricZero;
  float error = 0.0f;
};

// Least-squares refit of the scale for the codes that `c` gives, zero point kept: the scale s minimizing
// sum h (x - (code - zp) * s)^2 is sum(h x q) / sum(h q q) with q = code - zp. Sums in 8 lanes.
float reference_refit(const float* x, const float* h, int64_t len, const Choice& c) {
  float num[kLanes] = {}, den[kLanes] = {};
  for (int64_t j = 0; j < len; ++j) {
    const float q = static_cast<float>(reference_code(x[j], c.scale, c.zero_point) - c.zero_point);
    num[j % kLanes] += h[j] * x[j] * q;
    den[j % kLanes] += h[j] * q * q;
  }
  float n = 0.0f, d = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    n += num[l];
    d += den[l];
  }
  return d > 0.0f ? n / d : c.scale;
}

// Scale and zero point of an asymmetric block whose range is [lo, hi] (lo <= 0 <= hi).
Choice asymmetric_choice(float lo, float hi) {
  Choice c;
  c.scale = (hi - lo) / static_cast<float>(kCodeMax - kCodeMin);
  if (c.scale == 0.0f) return c;  // all zeros: zero point 8, every code 8
  const float z = round_half_even(static_cast<float>(kCodeMin) - lo / c.scale);
  c.zero_point = static_cast<int>(std::clamp(z, static_cast<float>(kCodeMin), static_cast<float>(kCodeMax)));
  return c;
}

// Picks the block's scale and zero point.
//   RTN, symmetric: the value m of largest magnitude maps to code 0 (i.e. -8): scale = m / -8.
//   RTN, asymmetric: [min(x, 0), max(x, 0)] spans the 16 codes.
//   Search: the same with the range shrunk by each clip ratio (asymmetric: both ends together, then the top
//   end alone, then the bottom end alone), keeping the candidate of least squared error (RTN on ties), then a
//   least-squares refit of the scale for the chosen codes, kept only when it lowers the error.
Choice reference_block(const float* x, const float* h, int64_t len, const Int4Params& p) {
  Choice best;
  if (p.symmetric) {
    float m = 0.0f;
    for (int64_t j = 0; j < len; ++j)
      if (std::fabs(x[j]) > std::fabs(m)) m = x[j];
    best.zero_point = kSymmetricZero;
    best.scale = m / -8.0f;
    best.error = int4_block_error(x, len, best.scale, best.zero_point, h);
    if (!p.search || best.scale == 0.0f) return best;
    for (int i = p.clip_stride; i < kInt4ClipSteps; i += p.clip_stride) {
      Choice c;
      c.zero_point = kSymmetricZero;
      c.scale = m * clip_ratio(i) / -8.0f;
      c.error = int4_block_error(x, len, c.scale, c.zero_point, h);
      if (c.error < best.error) best = c;
    }
  } else {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t j = 0; j < len; ++j) {
      lo = std::min(lo, x[j]);
      hi = std::max(hi, x[j]);
    }
    best = asymmetric_choice(lo, hi);
    best.error = int4_block_error(x, len, best.scale, best.zero_point, h);
    if (!p.search || best.scale == 0.0f) return best;
    int both = 0, top = 0;
    for (int i = p.clip_stride; i < kInt4ClipSteps; i += p.clip_stride) {  // both ends
      Choice c = asymmetric_choice(lo * clip_ratio(i), hi * clip_ratio(i));
      c.error = int4_block_error(x, len, c.scale, c.zero_point, h);
      if (c.error < best.error) {
        best = c;
        both = i;
      }
    }
    top = both;
    for (int i = 0; i < kInt4ClipSteps; i += p.clip_stride) {  // the top end alone
      Choice c = asymmetric_choice(lo * clip_ratio(both), hi * clip_ratio(i));
      c.error = int4_block_error(x, len, c.scale, c.zero_point, h);
      if (c.error < best.error) {
        best = c;
        top = i;
      }
    }
    for (int i = 0; i < kInt4ClipSteps; i += p.clip_stride) {  // the bottom end alone
      Choice c = asymmetric_choice(lo * clip_ratio(i), hi * clip_ratio(top));
      c.error = int4_block_error(x, len, c.scale, c.zero_point, h);
      if (c.error < best.error) best = c;
    }
  }
  Choice refit = best;
  refit.scale = reference_refit(x, h, len, best);
  refit.error = int4_block_error(x, len, refit.scale, refit.zero_point, h);
  if (refit.error < best.error) best = refit;
  return best;
}

void init_weight(int64_t k, int64_t n, const Int4Params& p, Int4Weight* out) {
  out->k = k;
  out->n = n;
  out->block_size = p.block_size;
  out->k_blocks = (k + p.block_size - 1) / p.block_size;
  out->symmetric = p.symmetric;
  out->codes.assign(static_cast<size_t>(n * out->k_blocks * p.block_size), 0);
  out->scales.assign(static_cast<size_t>(n * out->k_blocks), 0.0f);
  out->zero_points.assign(static_cast<size_t>(n * out->k_blocks), kSymmetricZero);
}

bool all_finite(const float* w, int64_t count) {
  float bad = 0.0f;  // NaN when any value is NaN or infinite (v - v)
  for (int64_t i = 0; i < count; ++i) bad += w[i] - w[i];
  return bad == 0.0f;
}

// ---------------------------------------------------------------------------------------------------------
// The fast path: each block copied to a contiguous buffer, loops the compiler vectorizes, columns in threads.
// Every float operation is the reference's, in the same order.

constexpr float kRoundMagic = 12582912.0f;  // 1.5 * 2^23: (v + M) - M rounds |v| < 2^22 half to even

struct FastBlock {
  const float* x;
  const float* h;  // importance, ones without calibration
  int64_t len;
  int64_t padded;  // len rounded up to kLanes; x[len..padded) are zero and ignored by the masks below
  float code[kMaxBlock];
};

// Codes for (scale, zp), as floats, into b.code.
inline void fast_codes(FastBlock& b, float scale, int zero_point) {
  const float z = static_cast<float>(zero_point);
  if (scale == 0.0f) {
    for (int64_t j = 0; j < b.padded; ++j) b.code[j] = z;
    return;
  }
  // x * (1 / scale) first: it differs from x / scale by a few units in the last place (|x / scale| < 1e6 here,
  // so by far less than 1e-4 after adding z), which changes a code only for a value that close to a half-integer.
  // A block holding such a value (or a reciprocal that overflows) is computed again with the division, so the
  // codes are exactly the reference's, at the cost of a multiply for almost every block.
  const float inv = 1.0f / scale;
  if (std::fabs(inv) < 1.0e30f) {
    int bad = 0;
    for (int64_t j = 0; j < b.padded; ++j) {
      float v = b.x[j] * inv + z;
      const float r = (v + kRoundMagic) - kRoundMagic;
      const float t = std::fabs(v - r);
      bad |= (t > 0.4999f) | (std::fabs(v) > 1.0e6f);
      v = v < 0.0f ? 0.0f : v;
      v = v > 15.0f ? 15.0f : v;
      b.code[j] = (v + kRoundMagic) - kRoundMagic;
    }
    if (!bad) return;
  }
  for (int64_t j = 0; j < b.padded; ++j) {
    float v = b.x[j] / scale + z;
    v = v < 0.0f ? 0.0f : v;
    v = v > 15.0f ? 15.0f : v;
    b.code[j] = (v + kRoundMagic) - kRoundMagic;
  }
}

inline float fast_error(FastBlock& b, float scale, int zero_point) {
  fast_codes(b, scale, zero_point);
  const float z = static_cast<float>(zero_point);
  float acc[kLanes] = {};
  const int64_t full = b.len / kLanes * kLanes;
  for (int64_t j = 0; j < full; j += kLanes)
    for (int l = 0; l < kLanes; ++l) {
      const float d = b.x[j + l] - (b.code[j + l] - z) * scale;
      acc[l] += b.h[j + l] * (d * d);
    }
  for (int64_t j = full; j < b.len; ++j) {
    const float d = b.x[j] - (b.code[j] - z) * scale;
    acc[j % kLanes] += b.h[j] * (d * d);
  }
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

inline float fast_refit(FastBlock& b, const Choice& c) {
  fast_codes(b, c.scale, c.zero_point);
  const float z = static_cast<float>(c.zero_point);
  float num[kLanes] = {}, den[kLanes] = {};
  for (int64_t j = 0; j < b.len; ++j) {
    const float q = b.code[j] - z;
    num[j % kLanes] += b.h[j] * b.x[j] * q;
    den[j % kLanes] += b.h[j] * q * q;
  }
  float n = 0.0f, d = 0.0f;
  for (int l = 0; l < kLanes; ++l) {
    n += num[l];
    d += den[l];
  }
  return d > 0.0f ? n / d : c.scale;
}

Choice fast_block(FastBlock& b, const Int4Params& p) {
  Choice best;
  auto consider = [&](float scale, int zp) {
    const float e = fast_error(b, scale, zp);
    if (e < best.error) {
      best.scale = scale;
      best.zero_point = zp;
      best.error = e;
      return true;
    }
    return false;
  };
  if (p.symmetric) {
    float m = 0.0f;
    for (int64_t j = 0; j < b.len; ++j)
      if (std::fabs(b.x[j]) > std::fabs(m)) m = b.x[j];
    best.zero_point = kSymmetricZero;
    best.scale = m / -8.0f;
    best.error = fast_error(b, best.scale, best.zero_point);
    if (!p.search || best.scale == 0.0f) return best;
    for (int i = p.clip_stride; i < kInt4ClipSteps; i += p.clip_stride) consider(m * clip_ratio(i) / -8.0f, kSymmetricZero);
  } else {
    float lo = 0.0f, hi = 0.0f;
    for (int64_t j = 0; j < b.len; ++j) {
      lo = std::min(lo, b.x[j]);
      hi = std::max(hi, b.x[j]);
    }
    best = asymmetric_choice(lo, hi);
    best.error = fast_error(b, best.scale, best.zero_point);
    if (!p.search || best.scale == 0.0f) return best;
    int both = 0, top = 0;
    for (int i = p.clip_stride; i < kInt4ClipSteps; i += p.clip_stride) {
      const Choice c = asymmetric_choice(lo * clip_ratio(i), hi * clip_ratio(i));
      if (consider(c.scale, c.zero_point)) both = i;
    }
    top = both;
    for (int i = 0; i < kInt4ClipSteps; i += p.clip_stride) {
      const Choice c = asymmetric_choice(lo * clip_ratio(both), hi * clip_ratio(i));
      if (consider(c.scale, c.zero_point)) top = i;
    }
    for (int i = 0; i < kInt4ClipSteps; i += p.clip_stride) {
      const Choice c = asymmetric_choice(lo * clip_ratio(i), hi * clip_ratio(top));
      consider(c.scale, c.zero_point);
    }
  }
  consider(fast_refit(b, best), best.zero_point);
  return best;
}

// Columns [c0, c1): blocks gathered from the K×N (or N×K) weight into a zero-padded buffer.
void fast_columns(const float* w, int64_t k, int64_t n, bool transposed, const Int4Params& p, int64_t c0, int64_t c1,
                  const float* importance, Int4Weight* out) {
  const int64_t bs = p.block_size, kb = out->k_blocks;
  alignas(32) float buf[kMaxBlock + kLanes];
  FastBlock b;
  b.x = buf;
  // A K×N weight's blocks run down its columns (a stride of N floats per value): a slab of kSlab columns is
  // first copied out row by row (one cache line per row), so that each block is then read contiguously; the
  // blocks' values, and so the result, are the same. Extra memory: kSlab × K floats.
  constexpr int64_t kSlab = 16;
  std::vector<float> slab;
  if (!transposed) slab.resize(static_cast<size_t>(kSlab * k));
  int64_t slab_c0 = -1;
  for (int64_t c = c0; c < c1; ++c) {
    if (!transposed && (slab_c0 < 0 || c >= slab_c0 + kSlab)) {
      slab_c0 = c;
      const int64_t s1 = std::min(c1, c + kSlab);
      for (int64_t r = 0; r < k; ++r) {
        const float* row = w + r * n;
        for (int64_t cc = c; cc < s1; ++cc) slab[static_cast<size_t>((cc - c) * k + r)] = row[cc];
      }
    }
    const float* col = transposed ? w + c * k : slab.data() + (c - slab_c0) * k;
    for (int64_t blk = 0; blk < kb; ++blk) {
      const int64_t r0 = blk * bs, len = std::min(bs, k - r0);
      std::memcpy(buf, col + r0, static_cast<size_t>(len) * sizeof(float));
      b.h = importance + r0;
      b.len = len;
      b.padded = (len + kLanes - 1) / kLanes * kLanes;
      for (int64_t j = len; j < b.padded; ++j) buf[j] = 0.0f;
      const Choice ch = fast_block(b, p);
      const size_t g = static_cast<size_t>(c * kb + blk);
      out->scales[g] = ch.scale;
      out->zero_points[g] = static_cast<uint8_t>(ch.zero_point);
      fast_codes(b, ch.scale, ch.zero_point);
      uint8_t* codes = out->codes.data() + g * static_cast<size_t>(bs);
      for (int64_t j = 0; j < len; ++j) codes[j] = static_cast<uint8_t>(b.code[j]);
      for (int64_t j = len; j < bs; ++j) codes[j] = static_cast<uint8_t>(ch.zero_point);
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// The streamed path: an N×K weight read a row (= one output column's K values) at a time from the mapped
// checkpoint, converted into a small buffer, quantized and packed straight into the output. Same results as the
// fast path (and so the reference): round-to-nearest has its own one-pass kernel, the search uses fast_block.

// 16 floats (one AVX-512 register; two or four narrower ones on other targets): GCC / Clang vector extensions,
// element-wise IEEE operations, the same as the scalar code's.
typedef float V16f __attribute__((vector_size(64)));
typedef int32_t V16i __attribute__((vector_size(64)));
typedef int32_t V8i __attribute__((vector_size(32)));
typedef uint8_t V8u8 __attribute__((vector_size(8)));
constexpr int kVec = 16;
constexpr V16i kIota = {0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
typedef uint8_t V32u8 __attribute__((vector_size(32)));
// Horizontal maximum / minimum by halving (order does not matter: no NaN, no -0 among the values reduced).
inline float hmax(V16f v) {
  typedef float V8f __attribute__((vector_size(32)));
  typedef float V4f __attribute__((vector_size(16)));
  const V8f a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const V8f m8 = a > b ? a : b;
  const V4f c = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), d = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const V4f m4 = c > d ? c : d;
  const float e = m4[0] > m4[1] ? m4[0] : m4[1], f = m4[2] > m4[3] ? m4[2] : m4[3];
  return e > f ? e : f;
}
inline int32_t hmin(V16i v) {
  typedef int32_t V4i __attribute__((vector_size(16)));
  const V8i a = __builtin_shufflevector(v, v, 0, 1, 2, 3, 4, 5, 6, 7), b = __builtin_shufflevector(v, v, 8, 9, 10, 11, 12, 13, 14, 15);
  const V8i m8 = a < b ? a : b;
  const V4i c = __builtin_shufflevector(m8, m8, 0, 1, 2, 3), d = __builtin_shufflevector(m8, m8, 4, 5, 6, 7);
  const V4i m4 = c < d ? c : d;
  const int32_t e = m4[0] < m4[1] ? m4[0] : m4[1], f = m4[2] < m4[3] ? m4[2] : m4[3];
  return e < f ? e : f;
}
inline V16f load16f(const float* p) {
  V16f v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

// |x| of 16 floats (the sign bit cleared).
inline V16f abs16f(const float* p) {
  const V16f v = load16f(p);
  V16i bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= 0x7FFFFFFF;
  V16f a;
  std::memcpy(&a, &bits, sizeof a);
  return a;
}

// RTN of one block of `bs` values (a multiple of 16; a partial last block is zero-padded: 0 maps exactly to the
// zero point, as the padding must), codes packed two per byte into `packed` (bs / 2 bytes). The reference's
// choice (reference_block without search) and codes (reference_code), in one pass for the range and one for
// the codes.
TREX_CLONES void rtn_block(const float* x, int64_t bs, bool symmetric, uint8_t* packed, float* scale_out,
                           uint8_t* zp_out) {
  const V16f zero = {};
  const V16i zeroi = {};
  Choice c;
  if (symmetric) {
    // The value of largest magnitude, the first one on ties (the reference's strict >); 0 when all are zero.
    V16f mv = zero;
    for (int64_t j = 0; j < bs; j += kVec) {
      const V16f a = abs16f(x + j);
      mv = a > mv ? a : mv;
    }
    const float mx = hmax(mv);
    float m = 0.0f;
    if (mx > 0.0f) {  // the first index holding it (a vector minimum over matching indices)
      const V16f mxv = zero + mx;
      V16i first = zeroi + static_cast<int32_t>(bs), idx = kIota;
      for (int64_t j = 0; j < bs; j += kVec, idx += kVec) {
        const V16f a = abs16f(x + j);
        const V16i cand = a == mxv ? idx : first;
        first = cand < first ? cand : first;
      }
      m = x[hmin(first)];
    }
    c.zero_point = kSymmetricZero;
    c.scale = m / -8.0f;
  } else {
    V16f lov = zero, hiv = zero;
    for (int64_t j = 0; j < bs; j += kVec) {
      const V16f v = load16f(x + j);
      lov = v < lov ? v : lov;
      hiv = v > hiv ? v : hiv;
    }
    float lo = 0.0f, hi = 0.0f;
    for (int l = 0; l < kVec; ++l) {
      lo = lov[l] < lo ? lov[l] : lo;
      hi = hiv[l] > hi ? hiv[l] : hi;
    }
    c = asymmetric_choice(lo, hi);
  }
  *scale_out = c.scale;
  *zp_out = static_cast<uint8_t>(c.zero_point);
  if (c.scale == 0.0f) {
    std::memset(packed, c.zero_point | (c.zero_point << 4), static_cast<size_t>(bs / 2));
    return;
  }
  const V16f scale = zero + c.scale, z = zero + static_cast<float>(c.zero_point), hi15 = zero + 15.0f,
             magic = zero + kRoundMagic;
  for (int64_t j = 0; j < bs; j += kVec) {
    V16f v = load16f(x + j) / scale + z;
    v = v < zero ? zero : v;
    v = v > hi15 ? hi15 : v;
    v = (v + magic) - magic;  // round half to even (|v| <= 15)
    const V16i q = __builtin_convertvector(v, V16i);
    const V8i even = __builtin_shufflevector(q, q, 0, 2, 4, 6, 8, 10, 12, 14);
    const V8i odd = __builtin_shufflevector(q, q, 1, 3, 5, 7, 9, 11, 13, 15);
    const V8i both = even | (odd << 4);  // element 2i in the low nibble, 2i + 1 in the high one
    V32u8 bytes;
    std::memcpy(&bytes, &both, sizeof bytes);
    const V8u8 b = __builtin_shufflevector(bytes, bytes, 0, 4, 8, 12, 16, 20, 24, 28);  // the low byte of each
    std::memcpy(packed + (j >> 1), &b, sizeof b);
  }
}

// True when every one of the n floats is finite.
TREX_CLONES bool finite_span(const float* x, int64_t n) {
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t b;
    std::memcpy(&b, x + i, 4);
    bad |= static_cast<uint32_t>((b & 0x7F800000u) == 0x7F800000u);
  }
  return bad == 0;
}

// Output columns [c0, c1) of the weight whose N rows of K values are `parts`' rows, in order. False on a
// non-finite value.
bool raw_columns(const std::vector<TensorView>& parts, int64_t k, const Int4Params& p, int64_t c0, int64_t c1,
                 uint8_t* codes, float* scales, uint8_t* zps) {
  const int64_t bs = p.block_size, kb = (k + bs - 1) / bs;
  // The column, zero-padded to whole blocks (+ kLanes for fast_block's padded reads).
  std::vector<float> col(static_cast<size_t>(kb * bs + kLanes), 0.0f);
  static const std::vector<float> ones(static_cast<size_t>(kMaxBlock + kLanes), 1.0f);
  FastBlock b;
  b.h = ones.data();
  int64_t row0 = 0;
  size_t part = 0;
  for (int64_t c = c0; c < c1; ++c) {
    while (c >= row0 + parts[part].shape[0]) row0 += parts[part++].shape[0];
    const TensorView& v = parts[part];
    convert_span_to_f32(v.dtype, v.data + static_cast<size_t>((c - row0) * k) * dtype_size(v.dtype),
                        static_cast<size_t>(k), col.data());
    if (!finite_span(col.data(), k)) return false;
    for (int64_t blk = 0; blk < kb; ++blk) {
      const size_t g = static_cast<size_t>(c * kb + blk);
      uint8_t* packed = codes + g * static_cast<size_t>(bs / 2);
      const float* x = col.data() + blk * bs;
      if (!p.search) {
        rtn_block(x, bs, p.symmetric, packed, scales + g, zps + g);
        continue;
      }
      const int64_t len = std::min(bs, k - blk * bs);
      b.x = x;
      b.len = len;
      b.padded = (len + kLanes - 1) / kLanes * kLanes;
      const Choice ch = fast_block(b, p);
      scales[g] = ch.scale;
      zps[g] = static_cast<uint8_t>(ch.zero_point);
      fast_codes(b, ch.scale, ch.zero_point);
      for (int64_t j = 0; j < bs; j += 2) {
        const int q0 = j < len ? static_cast<int>(b.code[j]) : ch.zero_point;
        const int q1 = j + 1 < len ? static_cast<int>(b.code[j + 1]) : ch.zero_point;
        packed[j / 2] = static_cast<uint8_t>(q0 | (q1 << 4));
      }
    }
  }
  return true;
}

}  // namespace

float int4_block_error(const float* x, int64_t len, float scale, int zero_point, const float* h) {
  float acc[kLanes] = {};
  for (int64_t j = 0; j < len; ++j) {
    const int code = reference_code(x[j], scale, zero_point);
    const float d = x[j] - static_cast<float>(code - zero_point) * scale;
    acc[j % kLanes] += (h ? h[j] : 1.0f) * (d * d);
  }
  float s = 0.0f;
  for (int l = 0; l < kLanes; ++l) s += acc[l];
  return s;
}

void check_int4_params(const Int4Params& p) {
  const int64_t b = p.block_size;
  if (b < 16 || b > kMaxBlock || (b & (b - 1)) != 0)
    throw UsageError("quantize: --block-size must be a power of two in 16..256 (got " + std::to_string(b) + ")");
  if (p.clip_stride < 1 || p.clip_stride >= kInt4ClipSteps)
    throw UsageError("quantize: clip search stride must be in 1.." + std::to_string(kInt4ClipSteps - 1));
}

bool quantize_int4_reference(const float* w, int64_t k, int64_t n, const Int4Params& p, Int4Weight* out,
                             const float* importance) {
  check_int4_params(p);
  if (!all_finite(w, k * n)) {
    *out = Int4Weight{};
    return false;
  }
  init_weight(k, n, p, out);
  std::vector<float> block(static_cast<size_t>(p.block_size)), weight(static_cast<size_t>(p.block_size));
  for (int64_t c = 0; c < n; ++c) {
    for (int64_t blk = 0; blk < out->k_blocks; ++blk) {
      // 1. The block: rows [blk * bs, blk * bs + len) of column c, and each row's importance (default 1).
      const int64_t r0 = blk * p.block_size, len = std::min(p.block_size, k - r0);
      for (int64_t j = 0; j < len; ++j) {
        block[static_cast<size_t>(j)] = w[(r0 + j) * n + c];
        weight[static_cast<size_t>(j)] = importance ? importance[r0 + j] : 1.0f;
      }
      // 2. Its scale and zero point.
      const Choice ch = reference_block(block.data(), weight.data(), len, p);
      const size_t g = static_cast<size_t>(c * out->k_blocks + blk);
      out->scales[g] = ch.scale;
      out->zero_points[g] = static_cast<uint8_t>(ch.zero_point);
      // 3. Its codes; the padding of a partial last block is the zero point (it stands for 0).
      for (int64_t j = 0; j < p.block_size; ++j)
        out->codes[g * static_cast<size_t>(p.block_size) + static_cast<size_t>(j)] =
            static_cast<uint8_t>(j < len ? reference_code(block[static_cast<size_t>(j)], ch.scale, ch.zero_point)
                                         : ch.zero_point);
    }
  }
  return true;
}

bool quantize_int4(const float* w, int64_t k, int64_t n, bool transposed, const Int4Params& p, Int4Weight* out,
                   int threads, const float* importance) {
  check_int4_params(p);
  if (!all_finite(w, k * n)) {
    *out = Int4Weight{};
    return false;
  }
  init_weight(k, n, p, out);
  // The importance of each row, padded by one block of ones (the zero-padded tail of a partial block).
  std::vector<float> h(static_cast<size_t>(k + kMaxBlock + kLanes), 1.0f);
  if (importance) std::copy(importance, importance + k, h.begin());
  int t = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n / 64)));
  if (t <= 1) {
    fast_columns(w, k, n, transposed, p, 0, n, h.data(), out);
    return true;
  }
  std::vector<std::thread> pool;
  for (int i = 0; i < t; ++i) {
    const int64_t c0 = n * i / t, c1 = n * (i + 1) / t;
    pool.emplace_back([=, &h] { fast_columns(w, k, n, transposed, p, c0, c1, h.data(), out); });
  }
  for (auto& th : pool) th.join();
  return true;
}

bool quantize_int4_rows(const std::vector<TensorView>& parts, int64_t k, int64_t n, const Int4Params& p,
                        uint8_t* codes, float* scales, uint8_t* zero_points, int threads) {
  check_int4_params(p);
  int64_t rows = 0;
  for (const TensorView& v : parts) {
    size_t need = 0;
    if (v.shape.size() != 2 || v.shape[1] != k || !fast_convertible(v.dtype) || v.shape[0] < 0 ||
        __builtin_mul_overflow(static_cast<size_t>(v.shape[0] * k), dtype_size(v.dtype), &need) || need > v.nbytes)
      throw InputError(v.file.empty() ? v.name : v.file,
                       "tensor '" + v.name + "': " + shape_str(v.shape) + " cannot give rows of " + std::to_string(k));
    rows += v.shape[0];
  }
  if (rows != n) throw std::logic_error("quantize_int4_rows: the parts hold " + std::to_string(rows) + " rows, want " + std::to_string(n));
  int t = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n / 64)));
  if (t <= 1) return raw_columns(parts, k, p, 0, n, codes, scales, zero_points);
  std::vector<std::thread> pool;
  std::vector<char> ok(static_cast<size_t>(t), 1);
  for (int i = 1; i < t; ++i)
    pool.emplace_back([&, i] { ok[static_cast<size_t>(i)] = raw_columns(parts, k, p, n * i / t, n * (i + 1) / t, codes, scales, zero_points); });
  ok[0] = raw_columns(parts, k, p, 0, n / t, codes, scales, zero_points);
  for (auto& th : pool) th.join();
  return std::all_of(ok.begin(), ok.end(), [](char c) { return c != 0; });
}

void pack_int4_zero_points(const uint8_t* zero_points, int64_t n, int64_t k_blocks, uint8_t* out) {
  const int64_t per_row = (k_blocks + 1) / 2;
  std::memset(out, 0, static_cast<size_t>(n * per_row));
  for (int64_t c = 0; c < n; ++c)
    for (int64_t b = 0; b < k_blocks; ++b) {
      const uint8_t z = zero_points[static_cast<size_t>(c * k_blocks + b)] & 0x0F;
      out[static_cast<size_t>(c * per_row + b / 2)] |= static_cast<uint8_t>(b % 2 ? z << 4 : z);
    }
}

namespace {

// Cholesky factorization in place: a (m×m, symmetric positive definite) -> lower L with a = L Lᵀ. False when
// a pivot is not positive.
bool cholesky_lower(std::vector<double>& a, int64_t m) {
  for (int64_t j = 0; j < m; ++j) {
    double d = a[static_cast<size_t>(j * m + j)];
    for (int64_t t = 0; t < j; ++t) d -= a[static_cast<size_t>(j * m + t)] * a[static_cast<size_t>(j * m + t)];
    if (!(d > 0.0)) return false;
    d = std::sqrt(d);
    a[static_cast<size_t>(j * m + j)] = d;
    for (int64_t i = j + 1; i < m; ++i) {
      double v = a[static_cast<size_t>(i * m + j)];
      for (int64_t t = 0; t < j; ++t) v -= a[static_cast<size_t>(i * m + t)] * a[static_cast<size_t>(j * m + t)];
      a[static_cast<size_t>(i * m + j)] = v / d;
    }
    for (int64_t i = 0; i < j; ++i) a[static_cast<size_t>(i * m + j)] = 0.0;
  }
  return true;
}

// U (upper, K×K) with H⁻¹ = Uᵀ U: factor H = R Rᵀ with R upper (a lower Cholesky of H with the indices
// reversed), then U = R⁻¹.
bool inverse_upper_factor(const std::vector<double>& h, int64_t m, std::vector<double>* u_out) {
  std::vector<double> rev(static_cast<size_t>(m * m));
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = 0; j < m; ++j) rev[static_cast<size_t>(i * m + j)] = h[static_cast<size_t>((m - 1 - i) * m + (m - 1 - j))];
  if (!cholesky_lower(rev, m)) return false;
  std::vector<double> r(static_cast<size_t>(m * m), 0.0);  // R = J M J, upper
  for (int64_t i = 0; i < m; ++i)
    for (int64_t j = i; j < m; ++j) r[static_cast<size_t>(i * m + j)] = rev[static_cast<size_t>((m - 1 - i) * m + (m - 1 - j))];
  // U = R⁻¹ (upper too), row by row from the bottom: U[i][j] = -(sum_{t=i+1..j} R[i][t] U[t][j]) / R[i][i].
  std::vector<double>& u = *u_out;
  u.assign(static_cast<size_t>(m * m), 0.0);
  std::vector<double> acc(static_cast<size_t>(m));
  for (int64_t i = m - 1; i >= 0; --i) {
    std::fill(acc.begin(), acc.end(), 0.0);
    for (int64_t t = i + 1; t < m; ++t) {
      const double rt = r[static_cast<size_t>(i * m + t)];
      const double* ut = u.data() + t * m;
      for (int64_t j = t; j < m; ++j) acc[static_cast<size_t>(j)] += rt * ut[j];
    }
    const double d = r[static_cast<size_t>(i * m + i)];
    u[static_cast<size_t>(i * m + i)] = 1.0 / d;
    for (int64_t j = i + 1; j < m; ++j) u[static_cast<size_t>(i * m + j)] = -acc[static_cast<size_t>(j)] / d;
  }
  return true;
}

}  // namespace

bool quantize_int4_gptq(const float* w, int64_t k, int64_t n, bool transposed, const Int4Params& p,
                        const std::vector<double>& gram, Int4Weight* out, int threads) {
  check_int4_params(p);
  if (static_cast<int64_t>(gram.size()) != k * k)
    throw InputError("int4 GPTQ: the activation Gram matrix has " + std::to_string(gram.size()) + " values, want " +
                     std::to_string(k * k));
  if (!all_finite(w, k * n)) {
    *out = Int4Weight{};
    return false;
  }
  init_weight(k, n, p, out);
  // 1. H = gram + kGptqDamping times its mean diagonal; a dead input channel (zero diagonal) gets 1 and its
  //    weights are irrelevant to the output.
  std::vector<double> h = gram;
  double mean_diag = 0.0;
  for (int64_t i = 0; i < k; ++i) mean_diag += h[static_cast<size_t>(i * k + i)];
  mean_diag = mean_diag > 0.0 ? mean_diag / static_cast<double>(k) : 1.0;
  std::vector<float> importance(static_cast<size_t>(k));
  for (int64_t i = 0; i < k; ++i) {
    double& d = h[static_cast<size_t>(i * k + i)];
    importance[static_cast<size_t>(i)] = static_cast<float>(d);
    if (d <= 0.0) d = 1.0;
    d += kGptqDamping * mean_diag;
  }
  std::vector<double> u;
  if (!inverse_upper_factor(h, k, &u)) return quantize_int4(w, k, n, transposed, p, out, threads, importance.data());
  std::vector<float> uf(u.begin(), u.end());

  // 2. Columns are independent: each is quantized row by row with error feedback.
  auto columns = [&](int64_t c0, int64_t c1) {
    std::vector<float> x(static_cast<size_t>(k));
    for (int64_t c = c0; c < c1; ++c) {
      for (int64_t r = 0; r < k; ++r) x[static_cast<size_t>(r)] = transposed ? w[c * k + r] : w[r * n + c];
      for (int64_t blk = 0; blk < out->k_blocks; ++blk) {
        const int64_t r0 = blk * p.block_size, len = std::min(p.block_size, k - r0);
        // The block's scale from its current (error-corrected) weights.
        const Choice ch = reference_block(x.data() + r0, importance.data() + r0, len, p);
        const size_t g = static_cast<size_t>(c * out->k_blocks + blk);
        out->scales[g] = ch.scale;
        out->zero_points[g] = static_cast<uint8_t>(ch.zero_point);
        uint8_t* codes = out->codes.data() + g * static_cast<size_t>(p.block_size);
        for (int64_t j = 0; j < p.block_size; ++j) codes[j] = static_cast<uint8_t>(ch.zero_point);
        for (int64_t j = 0; j < len; ++j) {
          const int64_t i = r0 + j;
          const int code = reference_code(x[static_cast<size_t>(i)], ch.scale, ch.zero_point);
          codes[j] = static_cast<uint8_t>(code);
          const float q = static_cast<float>(code - ch.zero_point) * ch.scale;
          // The rounding error, spread over the rows after i.
          const float e = (x[static_cast<size_t>(i)] - q) / uf[static_cast<size_t>(i * k + i)];
          const float* urow = uf.data() + i * k;
          for (int64_t t = i + 1; t < k; ++t) x[static_cast<size_t>(t)] -= e * urow[t];
        }
      }
    }
  };
  int t = threads > 0 ? threads : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  t = static_cast<int>(std::min<int64_t>(t, std::max<int64_t>(1, n / 16)));
  std::vector<std::thread> pool;
  for (int i = 1; i < t; ++i) pool.emplace_back(columns, n * i / t, n * (i + 1) / t);
  columns(0, n / t);
  for (auto& th : pool) th.join();
  return true;
}

float dequantize_int4(const Int4Weight& q, int64_t row, int64_t col) {
  const int64_t blk = row / q.block_size;
  const size_t g = static_cast<size_t>(col * q.k_blocks + blk);
  const int code = q.codes[g * static_cast<size_t>(q.block_size) + static_cast<size_t>(row % q.block_size)];
  return static_cast<float>(code - q.zero_points[g]) * q.scales[g];
}

std::vector<uint8_t> pack_int4_codes(const Int4Weight& q) {
  std::vector<uint8_t> out(q.codes.size() / 2);
  for (size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<uint8_t>((q.codes[2 * i] & 0x0F) | ((q.codes[2 * i + 1] & 0x0F) << 4));
  return out;
}

std::vector<uint8_t> pack_int4_zero_points(const Int4Weight& q) {
  const int64_t per_row = (q.k_blocks + 1) / 2;
  std::vector<uint8_t> out(static_cast<size_t>(q.n * per_row), 0);
  for (int64_t c = 0; c < q.n; ++c)
    for (int64_t b = 0; b < q.k_blocks; ++b) {
      const uint8_t z = q.zero_points[static_cast<size_t>(c * q.k_blocks + b)] & 0x0F;
      out[static_cast<size_t>(c * per_row + b / 2)] |= static_cast<uint8_t>(b % 2 ? z << 4 : z);
    }
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// The graph rewrite.

namespace {


void collect_subgraph_inputs(const onnx::GraphProto& g, std::unordered_set<std::string>* out) {
  for (const auto& node : g.node()) {
    for (const auto& in : node.input()) out->insert(in);
    for (const auto& a : node.attribute()) {
      if (a.has_g()) collect_subgraph_inputs(a.g(), out);
      for (const auto& sg : a.graphs()) collect_subgraph_inputs(sg, out);
    }
  }
}

}  // namespace

Model quantize_int4_model(const Model& in, const Int4Policy& policy, QuantizeReport* report_out) {
  check_int4_params(policy.params);
  QuantizeReport report;
  report.weight_bytes_before = in.weight_bytes();
  const onnx::GraphProto& g = in.proto.graph();
  const int64_t bs = policy.params.block_size;

  std::unordered_map<std::string, size_t> init_index;
  for (size_t i = 0; i < in.initializers.size(); ++i) init_index[in.initializers[i].name] = i;
  std::unordered_map<std::string, int> uses;
  for (const auto& node : g.node())
    for (const auto& x : node.input())
      if (!x.empty()) ++uses[x];
  std::unordered_set<std::string> pinned;
  for (const auto& node : g.node())
    for (const auto& a : node.attribute()) {
      if (a.has_g()) collect_subgraph_inputs(a.g(), &pinned);
      for (const auto& sg : a.graphs()) collect_subgraph_inputs(sg, &pinned);
    }
  for (const auto& o : g.output()) pinned.insert(o.name());
  std::unordered_set<std::string> graph_inputs;
  for (const auto& v : g.input()) graph_inputs.insert(v.name());
  UniqueNames fresh(in);

  struct QNames {
    std::string b, scales, zp;
    int64_t k = 0, n = 0;
    bool ok = false;
  };
  std::map<std::string, QNames> done;  // weight -> its MatMulNBits initializers
  std::vector<Initializer> new_inits;
  Model out;
  out.proto = in.proto;
  onnx::GraphProto* og = out.proto.mutable_graph();
  og->clear_node();

  // MatMul(x, Transpose(W)): W is quantized N×K (as for Gemm transB); its Transpose is written only if the MatMul
  // stays float (just before it).
  const std::unordered_map<std::string, TransposedWeight> folded_weights = transposed_weights(g, in);
  std::unordered_set<int> folded_nodes;
  for (const auto& [out_name, t] : folded_weights) folded_nodes.insert(t.node);
  for (int node_index = 0; node_index < g.node_size(); ++node_index) {
    const onnx::NodeProto& node = g.node(node_index);
    if (folded_nodes.count(node_index)) continue;
    const bool std_domain = node.domain().empty() || node.domain() == "ai.onnx";
    const TransposedWeight* folded = nullptr;
    if (std_domain && node.op_type() == "MatMul" && node.input_size() > 1)
      if (auto t = folded_weights.find(node.input(1)); t != folded_weights.end()) folded = &t->second;
    if (!std_domain || (node.op_type() != "MatMul" && node.op_type() != "Gemm")) {
      *og->add_node() = node;
      continue;
    }
    const std::string node_name = node.name().empty() ? node.output(0) : node.name();
    const std::string weight = folded ? folded->weight : node.input_size() > 1 ? node.input(1) : "";
    auto keep = [&](const std::string& why) {
      report.skipped.push_back({node_name, node.op_type(), weight, why});
      if (folded) *og->add_node() = g.node(folded->node);
      *og->add_node() = node;
    };
    if (std::find(policy.exclude_op_types.begin(), policy.exclude_op_types.end(), node.op_type()) !=
        policy.exclude_op_types.end()) {
      keep("op type excluded");
      continue;
    }
    bool excluded = false;
    for (const auto& pat : policy.exclude_nodes) excluded = excluded || glob_match(pat, node_name) || glob_match(pat, weight);
    if (excluded) {
      keep("excluded by pattern");
      continue;
    }
    auto it = init_index.find(weight);
    if (it == init_index.end() || in.initializers[it->second].data.dtype() != DType::kF32 ||
        in.initializers[it->second].data.dims().size() != 2) {
      keep(it == init_index.end() ? "weight is not a constant initializer" : "weight is not a 2-D float32 initializer");
      continue;
    }
    if (init_index.count(node.input(0))) {
      keep("both inputs are constant");
      continue;
    }
    bool transposed = folded != nullptr;
    std::string bias;
    if (node.op_type() == "Gemm") {
      if (int_attr(node, "transA", 0) != 0 || float_attr(node, "alpha", 1.0f) != 1.0f ||
          (node.input_size() > 2 && !node.input(2).empty() && float_attr(node, "beta", 1.0f) != 1.0f)) {
        keep("Gemm with transA=1 or alpha/beta != 1");
        continue;
      }
      transposed = int_attr(node, "transB", 0) != 0;
      if (node.input_size() > 2) bias = node.input(2);
    }
    const TensorData& src = in.initializers[it->second].data;
    const int64_t k = src.dims()[transposed ? 1 : 0], n = src.dims()[transposed ? 0 : 1];
    if (k < bs) {
      keep("K = " + std::to_string(k) + " is below the block size");
      continue;
    }
    if (policy.auto_policy && (k * n < policy.min_elements || n < policy.min_channels)) {
      keep("auto policy: small or logit-sized weight (" + std::to_string(k) + "x" + std::to_string(n) + ")");
      continue;
    }
    QNames& qn = done[weight + (transposed ? "/T" : "")];
    if (qn.b.empty() && !qn.ok && policy.streamed) {
      // The three tensors are written one after the other (new_inits keeps them together): the first one asked
      // for quantizes the weight, the last one drops the result.
      struct Pending {
        TensorData src;
        int64_t k, n;
        bool transposed;
        Int4Params params;
        std::string name;
        // The weight's N rows of K values in the mapped checkpoint, when it has them: quantized a row at a time,
        // the codes packed straight into the writer's buffer.
        std::vector<TensorView> raw;
        std::mutex mu;
        std::shared_ptr<Int4Weight> q;
        int left;
        std::shared_ptr<Int4Weight> get() {
          std::lock_guard<std::mutex> lock(mu);
          if (!q) {
            auto w = std::make_shared<Int4Weight>();
            if (!raw.empty()) {
              init_weight(k, n, params, w.get());
              w->codes.assign(static_cast<size_t>(n * w->k_blocks * params.block_size / 2), 0);  // packed
              if (!quantize_int4_rows(raw, k, n, params, w->codes.data(), w->scales.data(), w->zero_points.data()))
                throw InputError(name, "holds NaN or infinity; it cannot be quantized to int4");
            } else {
              Floats f = floats_of(src);
              if (!quantize_int4(f.p, k, n, transposed, params, w.get()))
                throw InputError(name, "holds NaN or infinity; it cannot be quantized to int4");
            }
            q = w;
          }
          std::shared_ptr<Int4Weight> r = q;
          if (--left == 0) q.reset();
          return r;
        }
        // MatMulNBits' B into dst: from raw rows, quantized straight into dst (codes kept packed for a second
        // ask); else packed from get().
        void codes(std::byte* dst) {
          if (!raw.empty()) {
            std::lock_guard<std::mutex> lock(mu);
            if (!q) {
              auto w = std::make_shared<Int4Weight>();  // scales and zero points; the packed codes go to dst only
              w->k = k;
              w->n = n;
              w->block_size = params.block_size;
              w->k_blocks = (k + params.block_size - 1) / params.block_size;
              w->symmetric = params.symmetric;
              w->scales.resize(static_cast<size_t>(n * w->k_blocks));
              w->zero_points.resize(static_cast<size_t>(n * w->k_blocks));
              if (!quantize_int4_rows(raw, k, n, params, reinterpret_cast<uint8_t*>(dst), w->scales.data(),
                                      w->zero_points.data()))
                throw InputError(name, "holds NaN or infinity; it cannot be quantized to int4");
              q = w;
              if (--left == 0) q.reset();
              return;
            }
            if (!q->codes.empty()) {  // quantized before (scales asked first): codes kept packed
              std::memcpy(dst, q->codes.data(), q->codes.size());
              if (--left == 0) q.reset();
              return;
            }
            // Asked a second time after a direct write: quantize again.
            q.reset();
            ++left;
          }
          if (!raw.empty()) return codes(dst);
          const std::vector<uint8_t> packed = pack_int4_codes(*get());
          std::memcpy(dst, packed.data(), packed.size());
        }
      };
      auto pend = std::make_shared<Pending>();
      pend->src = src;
      pend->k = k;
      pend->n = n;
      pend->transposed = transposed;
      // N×K rows: a Gemm transB weight's own rows, or a K×N weight's transpose (`<name>.T`, packed QKV).
      if (const TensorData::RawRows* rr = src.raw_rows(); rr && rr->transposed != transposed) {
        int64_t rows = 0;
        bool fits = true;
        for (const TensorView& v : rr->parts) {
          fits = fits && v.shape.size() == 2 && v.shape[1] == k;
          rows += v.shape.size() == 2 ? v.shape[0] : 0;
        }
        if (fits && rows == n) pend->raw = rr->parts;
      }
      if (pend->raw.empty() && !transposed && policy.row_source)
        if (std::optional<TensorData> rows = policy.row_source(weight, src.dims())) {
          pend->src = *rows;
          pend->transposed = true;
        }
      pend->params = policy.params;
      pend->name = weight;
      pend->left = policy.params.symmetric ? 2 : 3;
      const int64_t kb = (k + bs - 1) / bs;
      qn.ok = true;
      qn.k = k;
      qn.n = n;
      qn.b = fresh(weight + "_Q4");
      qn.scales = fresh(weight + "_scales");
      TensorData b = TensorData::produced(DType::kU8, {n, kb, bs / 2}, [pend](std::byte* dst) { pend->codes(dst); });
      b.with_sources_of(pend->src);
      new_inits.push_back({qn.b, std::move(b)});
      new_inits.push_back({qn.scales, TensorData::produced(DType::kF32, {n * kb}, [pend](std::byte* dst) {
                             const auto q = pend->get();
                             std::memcpy(dst, q->scales.data(), q->scales.size() * sizeof(float));
                           })});
      if (!policy.params.symmetric) {
        qn.zp = fresh(weight + "_zero_points");
        new_inits.push_back({qn.zp, TensorData::produced(DType::kU8, {n * ((kb + 1) / 2)}, [pend](std::byte* dst) {
                               const auto q = pend->get();
                               pack_int4_zero_points(q->zero_points.data(), q->n, q->k_blocks,
                                                     reinterpret_cast<uint8_t*>(dst));
                             })});
      }
    }
    if (qn.b.empty() && !qn.ok) {
      auto qw = std::make_shared<Int4Weight>();
      {
        Floats f = floats_of(src);
        auto imp = policy.importance.find(node.input(0));
        const float* h = imp != policy.importance.end() && static_cast<int64_t>(imp->second.size()) == k
                             ? imp->second.data()
                             : nullptr;
        auto gram = policy.gram.find(node.input(0));
        if (gram != policy.gram.end() && static_cast<int64_t>(gram->second.size()) == k * k)
          qn.ok = quantize_int4_gptq(f.p, k, n, transposed, policy.params, gram->second, qw.get());
        else
          qn.ok = quantize_int4(f.p, k, n, transposed, policy.params, qw.get(), 0, h);
      }
      if (!qn.ok) {
        qn.b = "-";  // marks "tried, not quantizable"
      } else {
        qn.k = k;
        qn.n = n;
        qn.b = fresh(weight + "_Q4");
        qn.scales = fresh(weight + "_scales");
        const int64_t kb = qw->k_blocks;
        // The codes are packed now (half a byte per weight); scales and zero points are small.
        new_inits.push_back({qn.b, TensorData::from_vector(DType::kU8, {n, kb, bs / 2}, pack_int4_codes(*qw))});
        new_inits.push_back({qn.scales, TensorData::from_vector(DType::kF32, {n * kb}, qw->scales)});
        if (!policy.params.symmetric) {
          qn.zp = fresh(weight + "_zero_points");
          new_inits.push_back(
              {qn.zp, TensorData::from_vector(DType::kU8, {n * ((kb + 1) / 2)}, pack_int4_zero_points(*qw))});
        }
      }
    }
    if (!qn.ok) {
      keep("weight holds NaN or infinity");
      continue;
    }
    const std::string result = bias.empty() ? node.output(0) : fresh(node.output(0) + "_matmul");
    onnx::NodeProto m;
    m.set_op_type("MatMulNBits");
    m.set_domain("com.microsoft");
    m.set_name(fresh(node_name + "_Q4"));
    m.add_input(node.input(0));
    m.add_input(qn.b);
    m.add_input(qn.scales);
    if (!qn.zp.empty()) m.add_input(qn.zp);
    m.add_output(result);
    add_int_attr(&m, "K", k);
    add_int_attr(&m, "N", n);
    add_int_attr(&m, "bits", 4);
    add_int_attr(&m, "block_size", bs);
    add_int_attr(&m, "accuracy_level", policy.accuracy_level);
    *og->add_node() = m;
    if (!bias.empty()) {
      onnx::NodeProto add;
      add.set_op_type("Add");
      add.set_name(fresh(node_name + "_bias_add"));
      add.add_input(result);
      add.add_input(bias);
      add.add_output(node.output(0));
      *og->add_node() = add;
    }
    uses[weight] -= 1;
    report.quantized.push_back({node_name, node.op_type(), weight, k, n, false});
  }

  for (const auto& init : in.initializers) {
    auto u = uses.find(init.name);
    const bool quantized_away =
        u != uses.end() && u->second == 0 && !pinned.count(init.name) && !graph_inputs.count(init.name);
    if (!quantized_away) out.initializers.push_back(init);
  }
  for (auto& init : new_inits) out.initializers.push_back(std::move(init));
  if (!report.quantized.empty()) import_ms_domain(&out.proto);
  report.weight_bytes_after = out.weight_bytes();
  if (report_out) *report_out = std::move(report);
  return out;
}

double int4_weight_error(const Model& model, const std::string& weight, const Int4Params& p) {
  for (const auto& init : model.initializers) {
    if (init.name != weight) continue;
    if (init.data.dtype() != DType::kF32 || init.data.dims().size() != 2) return 0.0;
    const int64_t k = init.data.dims()[0], n = init.data.dims()[1];
    if (k < p.block_size) return 0.0;
    Floats f = floats_of(init.data);
    Int4Weight q;
    if (!quantize_int4(f.p, k, n, false, p, &q)) return 0.0;
    double err = 0, ref = 0;
    for (int64_t r = 0; r < k; ++r)
      for (int64_t c = 0; c < n; ++c) {
        const double v = f.p[r * n + c];
        const double d = v - dequantize_int4(q, r, c);
        err += d * d;
        ref += v * v;
      }
    return ref > 0 ? std::sqrt(err / ref) : 0.0;
  }
  return 0.0;
}

}  // namespace trex
