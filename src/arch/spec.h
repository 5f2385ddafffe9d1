// The transformer block as data. A family file reads config.json into these structs and a weight-name table;
// the shared builders in blocks.cc turn any combination into a graph. Variants are fields here, never `if`
// chains over model types in the builders.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace trex {

enum class NormKind {
  kLayerNorm,       // (x - mean) / sqrt(var + eps) * w + b
  kRMSNorm,         // x / sqrt(mean(x^2) + eps) * w                (Llama, T5)
  kRMSNormPlusOne,  // x / sqrt(mean(x^2) + eps) * (1 + w)          (Gemma)
};
enum class NormPlacement { kPre, kPost };  // norm before each sub-block (GPT-2, Llama) or after the residual (BERT)
enum class MlpKind { kPlain, kGated };     // down(act(up x))  |  down(act(gate x) * up x)

// How attention scores are scaled: transformers' families differ in where the 1/sqrt(d) goes, and matching the
// reference op for op keeps results bit-close.
enum class ScoreScaling {
  kDivideScores,    // (q k^T) / sqrt(d)          BERT, GPT-2
  kMultiplyScores,  // (q k^T) * d^-0.5           Llama family
  kDivideQuery,     // (q / sqrt(d)) k^T          DistilBERT
  kNone,            // q k^T                      GPT-2 with scale_attn_weights = false
};

// Rotary position embeddings. inv_freq is computed at export; scaling variants change it (and cos/sin's factor).
struct RotarySpec {
  enum class Scaling { kNone, kLinear, kLlama3, kLongRope };
  double theta = 10000;
  int64_t dim = 0;  // rotated dims of each head (partial rotary: < head_dim)
  Scaling scaling = Scaling::kNone;
  double factor = 1;  // linear / llama3
  double low_freq_factor = 1, high_freq_factor = 4;
  int64_t original_max_positions = 0;  // llama3 / longrope
  std::vector<double> short_factor, long_factor;  // longrope, dim / 2 each
  double attention_factor = 1;  // cos/sin multiplier

  // inv_freq per transformers' rope init functions (float32, dim / 2 values).
  std::vector<float> inv_freq(const std::vector<double>* longrope_factors = nullptr) const;
};

struct AttentionSpec {
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // < num_heads: grouped-query attention (K/V repeated per group)
  int64_t head_dim = 0;      // not always hidden / heads (Gemma, Qwen3)
  bool causal = false;
  bool qkv_bias = false;
  bool o_bias = false;
  bool qk_norm = false;  // RMSNorm over head_dim on q and k before rotary (Qwen3)
  ScoreScaling scaling = ScoreScaling::kDivideScores;
  double inverse_layer_scale = 1;  // GPT-2's scale_attn_by_inverse_layer_idx: scores / (layer + 1)
  std::optional<int64_t> sliding_window;  // keys farther back than this are masked (Mistral)
  std::optional<RotarySpec> rotary;
};

struct BlockSpec {
  int64_t hidden = 0;
  NormKind norm = NormKind::kLayerNorm;
  NormPlacement placement = NormPlacement::kPost;
  float eps = 1e-12f;
  AttentionSpec attention;
  MlpKind mlp = MlpKind::kPlain;
  std::string activation = "gelu";  // transformers' ACT2FN name
  int64_t intermediate = 0;
  bool mlp_bias = true;
  // GPT-2's Conv1D stores weights [in, out] (x @ W); nn.Linear stores [out, in] (x @ W^T).
  bool conv1d = false;
};

// Checkpoint tensor names of one layer, as templates where `{i}` stands for the layer index. A role left empty
// is one the family does not have (the spec says which roles are used: packed qkv vs q/k/v, gate_up vs gate+up).
// Each norm role names the norm of its sub-block: applied before it (pre-norm) or after its residual
// (post-norm). cross_*: the cross-attention of encoder-decoder decoder layers.
struct LayerNames {
  std::string attn_norm, q, k, v, qkv, o, q_norm, k_norm;
  std::string cross_norm, cross_q, cross_k, cross_v, cross_o;
  std::string mlp_norm, up, gate, gate_up, down;
  // The names for layer i (every `{i}` replaced).
  LayerNames at(int64_t i) const;
};

}  // namespace trex
