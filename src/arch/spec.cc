#include "arch/spec.h"

#include <cmath>

namespace trex {

LayerNames LayerNames::at(int64_t i) const {
  auto fill = [&](const std::string& t) {
    std::string s = t;
    const std::string idx = std::to_string(i);
    for (size_t p = s.find("{i}"); p != std::string::npos; p = s.find("{i}", p + idx.size())) s.replace(p, 3, idx);
    return s;
  };
  LayerNames n;
  n.attn_norm = fill(attn_norm);
  n.q = fill(q);
  n.k = fill(k);
  n.v = fill(v);
  n.qkv = fill(qkv);
  n.o = fill(o);
  n.q_norm = fill(q_norm);
  n.k_norm = fill(k_norm);
  n.cross_norm = fill(cross_norm);
  n.cross_q = fill(cross_q);
  n.cross_k = fill(cross_k);
  n.cross_v = fill(cross_v);
  n.cross_o = fill(cross_o);
  n.mlp_norm = fill(mlp_norm);
  n.up = fill(up);
  n.gate = fill(gate);
  n.gate_up = fill(gate_up);
  n.down = fill(down);
  return n;
}

// transformers computes these in float32 tensors (torch.arange(...).float() / dim, base ** x, 1 / x); the same
// float32 steps here give the same table bit for bit.
std::vector<float> RotarySpec::inv_freq(const std::vector<double>* longrope_factors) const {
  const int64_t half = dim / 2;
  std::vector<float> out(static_cast<size_t>(half));
  for (int64_t i = 0; i < half; ++i) {
    const float exponent = static_cast<float>(2 * i) / static_cast<float>(dim);
    const float base_pow = std::pow(static_cast<float>(theta), exponent);
    float f;
    if (longrope_factors)
      f = 1.0f / (static_cast<float>((*longrope_factors)[static_cast<size_t>(i)]) * base_pow);
    else
      f = 1.0f / base_pow;
    out[static_cast<size_t>(i)] = f;
  }
  if (scaling == Scaling::kLinear) {
    for (float& f : out) f = f / static_cast<float>(factor);
  } else if (scaling == Scaling::kLlama3) {
    const float old_len = static_cast<float>(original_max_positions);
    const float lff = static_cast<float>(low_freq_factor), hff = static_cast<float>(high_freq_factor);
    const float fac = static_cast<float>(factor);
    const float low_freq_wavelen = old_len / lff, high_freq_wavelen = old_len / hff;
    for (float& f : out) {
      const float wavelen = static_cast<float>(2 * M_PI) / f;
      float scaled = wavelen > low_freq_wavelen ? f / fac : f;
      const float smooth = (old_len / wavelen - lff) / (hff - lff);
      const float smoothed = (1 - smooth) * scaled / fac + smooth * scaled;
      const bool medium = !(wavelen < high_freq_wavelen) && !(wavelen > low_freq_wavelen);
      f = medium ? smoothed : scaled;
    }
  }
  return out;
}

}  // namespace trex
