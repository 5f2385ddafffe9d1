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

#include "util/error.h"

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

  for (const auto& node : g.node()) {
    const bool std_domain = node.domain().empty() || node.domain() == "ai.onnx";
    if (!std_domain || (node.op_type() != "MatMul" && node.op_type() != "Gemm")) {
      *og->add_node() = node;
      continue;
    }
    const std::string node_name = node.name().empty() ? node.output(0) : node.name();
    const std::string weight = node.input_size() > 1 ? node.input(1) : "";
    auto keep = [&](const std::string& why) {
      report.skipped.push_back({node_name, node.op_type(), weight, why});
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
    bool transposed = false;
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
        std::mutex mu;
        std::shared_ptr<Int4Weight> q;
        int left;
        std::shared_ptr<Int4Weight> get() {
          std::lock_guard<std::mutex> lock(mu);
          if (!q) {
            auto w = std::make_shared<Int4Weight>();
            {
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
      };
      auto pend = std::make_shared<Pending>();
      pend->src = src;
      pend->k = k;
      pend->n = n;
      pend->transposed = transposed;
      if (!transposed && policy.row_source)
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
      TensorData b = TensorData::produced(DType::kU8, {n, kb, bs / 2}, [pend](std::byte* dst) {
        const std::vector<uint8_t> packed = pack_int4_codes(*pend->get());
        std::memcpy(dst, packed.data(), packed.size());
      });
      b.with_sources_of(pend->src);
      new_inits.push_back({qn.b, std::move(b)});
      new_inits.push_back({qn.scales, TensorData::produced(DType::kF32, {n * kb}, [pend](std::byte* dst) {
                             const auto q = pend->get();
                             std::memcpy(dst, q->scales.data(), q->scales.size() * sizeof(float));
                           })});
      if (!policy.params.symmetric) {
        qn.zp = fresh(weight + "_zero_points");
        new_inits.push_back({qn.zp, TensorData::produced(DType::kU8, {n * ((kb + 1) / 2)}, [pend](std::byte* dst) {
                               const std::vector<uint8_t> zp = pack_int4_zero_points(*pend->get());
                               std::memcpy(dst, zp.data(), zp.size());
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
