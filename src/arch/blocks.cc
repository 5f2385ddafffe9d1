#include "arch/blocks.h"

#include <cmath>
#include <limits>
#include <algorithm>
#include <map>
#include <stdexcept>
#include <tuple>

#include "arch/layers.h"
#include "util/error.h"

namespace trex::blocks {

Value norm(GraphBuilder& g, Weights& w, const Value& x, NormKind kind, const std::string& name, int64_t dim, float eps,
           bool bias) {
  if (kind == NormKind::kLayerNorm) {
    Value b = bias ? w.get(name + ".bias", {dim}) : g.const_f32s(std::vector<float>(static_cast<size_t>(dim), 0.0f),
                                                                  name + ".zero_bias");
    return g.layer_norm(x, w.get(name + ".weight", {dim}), b, eps);
  }
  // Gemma scales by 1 + weight: folded into the initializer at export.
  Value weight = kind == NormKind::kRMSNormPlusOne ? w.get_plus_one(name + ".weight", {dim}) : w.get(name + ".weight", {dim});
  if (g.fused())
    return g.op("SimplifiedLayerNormalization", {x, weight},
                {GraphBuilder::Attr::Int("axis", -1), GraphBuilder::Attr::Float("epsilon", eps)});
  auto s = g.scope("rms_norm");
  // transformers: x * rsqrt(mean(x^2) + eps), then the weight. (The Pow/ReduceMean/Add/Sqrt/Div form is the one
  // ONNX Runtime's graph optimizer fuses into SimplifiedLayerNormalization.)
  Value var = g.reduce_mean(g.op("Pow", {x, g.const_f32(2.0f)}), {-1});
  Value normed = g.div(x, g.op("Sqrt", {g.add(var, g.const_f32(eps))}));
  return g.mul(normed, weight);
}

std::pair<Value, Value> residual_norm(GraphBuilder& g, Weights& w, const Value& x, const Value& delta, NormKind kind,
                                      const std::string& name, int64_t dim, float eps, bool bias) {
  if (!g.fused()) {
    Value sum = g.add(x, delta);
    return {sum, norm(g, w, sum, kind, name, dim, eps, bias)};
  }
  // SkipSimplifiedLayerNormalization / SkipLayerNormalization: norm(input + skip); output 3 is the sum itself.
  std::vector<Value> outs;
  if (kind == NormKind::kLayerNorm) {
    std::vector<Value> in{delta, x, w.get(name + ".weight", {dim})};
    if (bias) in.push_back(w.get(name + ".bias", {dim}));
    outs = g.node("SkipLayerNormalization", in, {GraphBuilder::Attr::Float("epsilon", eps)}, 4, GraphBuilder::kMsDomain);
  } else {
    Value weight = kind == NormKind::kRMSNormPlusOne ? w.get_plus_one(name + ".weight", {dim}) : w.get(name + ".weight", {dim});
    outs = g.node("SkipSimplifiedLayerNormalization", {delta, x, weight}, {GraphBuilder::Attr::Float("epsilon", eps)}, 4,
                  GraphBuilder::kMsDomain);
  }
  return {outs[3], outs[0]};
}

Value project(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t in, int64_t out, bool bias,
              bool conv1d) {
  Value y = conv1d ? g.matmul(x, w.get(name + ".weight", {in, out}))
                   : g.matmul(x, w.get_transposed(name + ".weight", {out, in}));
  if (bias) y = g.add(y, w.get(name + ".bias", {out}));
  return y;
}

namespace {

// [B, kvh, T, d] → [B, kvh * rep, T, d] with each K/V head repeated `rep` times in place (k0 k0 k1 k1 ...),
// as transformers' repeat_kv.
Value repeat_kv(GraphBuilder& g, const Value& x, int64_t kv_heads, int64_t rep, int64_t head_dim) {
  if (rep == 1) return x;
  auto s = g.scope("repeat_kv");
  Value x5 = g.unsqueeze(x, {2});  // [B, kvh, 1, T, d]
  Value target = g.concat({g.dim(x, 0), g.const_i64({kv_heads, rep}), g.dim(x, 2), g.const_i64({head_dim})}, 0);
  Value expanded = g.op("Expand", {x5, target});
  return g.reshape(expanded, {0, kv_heads * rep, -1, head_dim});
}

// rotate_half(x) = cat(-x2, x1) over the last axis of x [..., dim].
Value rotate_half(GraphBuilder& g, const Value& x, int64_t dim) {
  Value x1 = g.slice_axis(x, -1, 0, dim / 2);
  Value x2 = g.slice_axis(x, -1, dim / 2, dim);
  return g.concat({g.op("Neg", {x2}), x1}, -1);
}

// x * cos + rotate_half(x) * sin on the first `rot` dims of each head; the rest passes through (partial rotary).
Value apply_rotary(GraphBuilder& g, const Value& x, const Value& cos, const Value& sin, int64_t rot, int64_t head_dim) {
  auto s = g.scope("rotary");
  Value r = rot == head_dim ? x : g.slice_axis(x, -1, 0, rot);
  Value out = g.add(g.mul(r, cos), g.mul(rotate_half(g, r, rot), sin));
  if (rot == head_dim) return out;
  return g.concat({out, g.slice_axis(x, -1, rot, head_dim)}, -1);
}

// [B, S, n * d] → [B, n, S, d]
Value split_heads(GraphBuilder& g, const Value& x, int64_t n, int64_t d) {
  return g.transpose(g.reshape(x, {0, 0, n, d}), {0, 2, 1, 3});
}

}  // namespace

AttentionOutputs attention_core(GraphBuilder& g, const Value& q, const Value& k, const Value& v,
                                const AttentionSpec& spec, const AttentionInputs& in) {
  AttentionOutputs out;
  Value keys = k, values = v;
  if (!in.past_key.empty()) {
    keys = g.concat({in.past_key, k}, 2);
    values = g.concat({in.past_value, v}, 2);
    out.present_key = keys;
    out.present_value = values;
  }
  const int64_t rep = spec.num_heads / spec.num_kv_heads;
  keys = repeat_kv(g, keys, spec.num_kv_heads, rep, spec.head_dim);
  values = repeat_kv(g, values, spec.num_kv_heads, rep, spec.head_dim);
  Value kt = g.transpose(keys, {0, 1, 3, 2});
  // transformers rounds the Python double sqrt(d) (or d**-0.5) to float once; the same constant here.
  const double d = static_cast<double>(spec.head_dim);
  Value scores;
  switch (spec.scaling) {
    case ScoreScaling::kDivideScores:
      scores = g.div(g.matmul(q, kt), g.const_f32(static_cast<float>(std::sqrt(d))));
      break;
    case ScoreScaling::kMultiplyScores:
      scores = g.mul(g.matmul(q, kt), g.const_f32(static_cast<float>(std::pow(d, -0.5))));
      break;
    case ScoreScaling::kDivideQuery:
      scores = g.matmul(g.div(q, g.const_f32(static_cast<float>(std::sqrt(d)))), kt);
      break;
    case ScoreScaling::kNone:
      scores = g.matmul(q, kt);
      break;
  }
  if (spec.inverse_layer_scale != 1) scores = g.div(scores, g.const_f32(static_cast<float>(spec.inverse_layer_scale)));
  if (!in.mask_bias.empty()) scores = g.add(scores, in.mask_bias);
  Value probs = g.softmax(scores, -1);
  Value ctx = g.matmul(probs, values);  // [B, heads, S, d]
  out.context = g.reshape(g.transpose(ctx, {0, 2, 1, 3}), {0, 0, spec.num_heads * spec.head_dim});
  return out;
}

bool uses_group_query_attention(const GraphBuilder& g, const AttentionSpec& a) {
  // ONNX Runtime's CPU kernel wants head sizes in multiples of 16; other heads keep the plain attention ops.
  return g.fused() && a.head_dim % 16 == 0;
}

namespace {

// ONNX Runtime's fused lowering of self_attention():
//
//   x ─MatMul(packed W_qkv)─(+b)─┬─ q ─(Qwen3: RMSNorm per head)─RotaryEmbedding─┐
//                                ├─ k ─(Qwen3: RMSNorm per head)─RotaryEmbedding─┼─► GroupQueryAttention ─MatMul(W_o)─► out
//                                └─ v ───────────────────────────────────────────┘    ▲                  └─► present K/V
//      past K/V, seqlens_k = T - 1 and T (int32), the additive mask bias ─────────────┘
//
// Most models (standard, linear or Llama-3 rotary, no per-head norms) skip the two RotaryEmbedding nodes and the
// slices: GroupQueryAttention takes the packed QKV and rotates q and k itself (do_rotary, the same cos/sin caches
// computed at export), at positions counted from seqlens_k — for a left-padded row, transformers' positions
// shifted by its padding, so its cached keys differ from the plain graph's while its attention (which depends
// only on position differences) does not. The others (Qwen3, LongRoPE, rotary widths the kernel refuses) run
// com.microsoft RotaryEmbedding at position_ids (transformers' positions, which skip left padding), as drawn.
// Padding, the causal mask and sliding windows come from the additive bias the plain graph uses.
AttentionOutputs fused_self_attention(GraphBuilder& g, Weights& w, const Value& x, const BlockSpec& b,
                                      const LayerNames& n, const AttentionInputs& in) {
  const AttentionSpec& a = b.attention;
  const int64_t hd = a.head_dim, q_dim = a.num_heads * hd, kv_dim = a.num_kv_heads * hd;
  Value qkv;
  if (!n.qkv.empty()) {
    qkv = project(g, w, x, n.qkv, b.hidden, q_dim + 2 * kv_dim, a.qkv_bias, b.conv1d);
  } else {
    const std::string base = n.q.substr(0, n.q.rfind('.') + 1) + "qkv_packed";
    qkv = g.matmul(x, w.get_packed(base + ".weight", {{n.q + ".weight", q_dim}, {n.k + ".weight", kv_dim},
                                                     {n.v + ".weight", kv_dim}},
                                   b.hidden, b.conv1d));
    if (a.qkv_bias)
      qkv = g.add(qkv, w.get_concat(base + ".bias", {{n.q + ".bias", q_dim}, {n.k + ".bias", kv_dim},
                                                   {n.v + ".bias", kv_dim}}));
  }
  // Rotary inside GroupQueryAttention (do_rotary, on the packed QKV: no Slice / RotaryEmbedding nodes, as the
  // builder's graphs). Its positions come from seqlens_k (T - 1 here, left padding counted), i.e. transformers'
  // positions shifted by each row's padding, the same shift for the row's queries and cached keys: attention
  // depends only on position differences, so the outputs are transformers' (tests/python/test_decoders.py, left-
  // padded batches). Not for Qwen3's per-head norms (between projection and rotary), LongRoPE (its tables switch
  // on the largest position id), nor rotary widths the kernel refuses (half of it a multiple of 8).
  const bool inner_rotary = a.rotary && !a.qk_norm && a.rotary->scaling != RotarySpec::Scaling::kLongRope &&
                            a.rotary->dim % 16 == 0 && a.rotary->dim <= hd;
  std::vector<Value> qkv_in{qkv, "", ""};
  if (!inner_rotary && (a.qk_norm || a.rotary)) {
    Value q = g.slice_axis(qkv, -1, 0, q_dim), k = g.slice_axis(qkv, -1, q_dim, q_dim + kv_dim);
    auto per_head_norm = [&](const Value& t, int64_t heads, const std::string& name, int64_t width) {
      return g.reshape(norm(g, w, g.reshape(t, {0, 0, heads, hd}), NormKind::kRMSNorm, name, hd, b.eps), {0, 0, width});
    };
    if (a.qk_norm) {
      q = per_head_norm(q, a.num_heads, n.q_norm, q_dim);
      k = per_head_norm(k, a.num_kv_heads, n.k_norm, kv_dim);
    }
    if (a.rotary) {
      auto rotate = [&](const Value& t, int64_t heads) {
        return g.node("RotaryEmbedding", {t, in.position_ids, in.cos, in.sin},
                      {GraphBuilder::Attr::Int("num_heads", heads),
                       GraphBuilder::Attr::Int("rotary_embedding_dim", a.rotary->dim)},
                      1, GraphBuilder::kMsDomain)[0];
      };
      q = rotate(q, a.num_heads);
      k = rotate(k, a.num_kv_heads);
    }
    qkv_in = {q, k, g.slice_axis(qkv, -1, q_dim + kv_dim, q_dim + 2 * kv_dim)};
  }
  double scale = a.scaling == ScoreScaling::kNone ? 1.0 : 1.0 / std::sqrt(static_cast<double>(hd));
  scale /= a.inverse_layer_scale;
  std::vector<Value> inputs = {qkv_in[0], qkv_in[1], qkv_in[2], in.past_key, in.past_value, in.seqlens_k,
                               in.total_length, /*cos_cache=*/inner_rotary ? in.cos : "",
                               /*sin_cache=*/inner_rotary ? in.sin : "", /*position_ids=*/"", in.mask_bias};
  std::vector<GraphBuilder::Attr> attrs = {GraphBuilder::Attr::Int("num_heads", a.num_heads),
                                           GraphBuilder::Attr::Int("kv_num_heads", a.num_kv_heads),
                                           GraphBuilder::Attr::Float("scale", static_cast<float>(scale))};
  if (inner_rotary) attrs.push_back(GraphBuilder::Attr::Int("do_rotary", 1));
  auto outs = g.node("GroupQueryAttention", inputs, attrs, 3, GraphBuilder::kMsDomain);
  AttentionOutputs out;
  out.context = project(g, w, outs[0], n.o, q_dim, b.hidden, a.o_bias, b.conv1d);
  out.present_key = outs[1];
  out.present_value = outs[2];
  return out;
}

}  // namespace

AttentionOutputs self_attention(GraphBuilder& g, Weights& w, const Value& x, const BlockSpec& b,
                                const LayerNames& n, const AttentionInputs& in) {
  auto s = g.scope("attention");
  if (uses_group_query_attention(g, b.attention)) return fused_self_attention(g, w, x, b, n, in);
  const AttentionSpec& a = b.attention;
  const int64_t hd = a.head_dim, q_dim = a.num_heads * hd, kv_dim = a.num_kv_heads * hd;
  Value q, k, v;
  if (!n.qkv.empty()) {
    // Packed projection (GPT-2 c_attn, Phi-3 qkv_proj): one MatMul, then the three slices.
    Value qkv = project(g, w, x, n.qkv, b.hidden, q_dim + 2 * kv_dim, a.qkv_bias, b.conv1d);
    q = g.slice_axis(qkv, -1, 0, q_dim);
    k = g.slice_axis(qkv, -1, q_dim, q_dim + kv_dim);
    v = g.slice_axis(qkv, -1, q_dim + kv_dim, q_dim + 2 * kv_dim);
  } else {
    q = project(g, w, x, n.q, b.hidden, q_dim, a.qkv_bias, b.conv1d);
    k = project(g, w, x, n.k, b.hidden, kv_dim, a.qkv_bias, b.conv1d);
    v = project(g, w, x, n.v, b.hidden, kv_dim, a.qkv_bias, b.conv1d);
  }
  if (a.qk_norm) {
    // Qwen3: RMSNorm over each head's dims, on [B, S, heads, d], before the heads move to axis 1.
    q = g.transpose(norm(g, w, g.reshape(q, {0, 0, a.num_heads, hd}), NormKind::kRMSNorm, n.q_norm, hd, b.eps),
                    {0, 2, 1, 3});
    k = g.transpose(norm(g, w, g.reshape(k, {0, 0, a.num_kv_heads, hd}), NormKind::kRMSNorm, n.k_norm, hd, b.eps),
                    {0, 2, 1, 3});
  } else {
    q = split_heads(g, q, a.num_heads, hd);
    k = split_heads(g, k, a.num_kv_heads, hd);
  }
  v = split_heads(g, v, a.num_kv_heads, hd);
  if (a.rotary) {
    q = apply_rotary(g, q, in.cos, in.sin, a.rotary->dim, hd);
    k = apply_rotary(g, k, in.cos, in.sin, a.rotary->dim, hd);
  }
  AttentionOutputs out = attention_core(g, q, k, v, a, in);
  out.context = project(g, w, out.context, n.o, q_dim, b.hidden, a.o_bias, b.conv1d);
  return out;
}

Value mlp(GraphBuilder& g, Weights& w, const Value& x, const BlockSpec& b, const LayerNames& n,
          const std::string& config_file) {
  auto s = g.scope("mlp");
  const int64_t h = b.hidden, f = b.intermediate;
  if (b.mlp == MlpKind::kPlain) {
    Value up = layers::activation(g, project(g, w, x, n.up, h, f, b.mlp_bias, b.conv1d), b.activation, config_file);
    return project(g, w, up, n.down, f, h, b.mlp_bias, b.conv1d);
  }
  Value gate, up;
  if (!n.gate_up.empty()) {
    // Phi-3's gate_up_proj: [gate; up] stacked on the output axis.
    Value both = project(g, w, x, n.gate_up, h, 2 * f, b.mlp_bias, b.conv1d);
    gate = g.slice_axis(both, -1, 0, f);
    up = g.slice_axis(both, -1, f, 2 * f);
  } else {
    gate = project(g, w, x, n.gate, h, f, b.mlp_bias, b.conv1d);
    up = project(g, w, x, n.up, h, f, b.mlp_bias, b.conv1d);
  }
  Value act = g.mul(layers::activation(g, gate, b.activation, config_file), up);
  return project(g, w, act, n.down, f, h, b.mlp_bias, b.conv1d);
}

namespace {

// The additive mask [B, 1, S, T]: 0 where query i (absolute position P + i) may see key j — j <= P + i, the key
// not padding, and within the sliding window when there is one — else float32's lowest (transformers' eager).
Value causal_mask_bias(GraphBuilder& g, const Value& input_ids, const Value& attention_mask,
                       std::optional<int64_t> window) {
  auto s = g.scope(window ? "mask_window" : "mask");
  Value total = g.squeeze(g.dim(attention_mask, 1), {0});
  Value seq = g.squeeze(g.dim(input_ids, 1), {0});
  Value past = g.sub(total, seq);
  Value one = g.const_i64({1}, true);
  Value q_pos = g.unsqueeze(g.range(past, total, one), {1});                        // [S, 1]
  Value kv_pos = g.unsqueeze(g.range(g.const_i64({0}, true), total, one), {0});     // [1, T]
  Value allowed = g.less_or_equal(kv_pos, q_pos);                                   // [S, T]
  if (window) allowed = g.logical_and(allowed, g.greater(kv_pos, g.sub(q_pos, g.const_i64({*window}, true))));
  Value keys = g.unsqueeze(g.cast(attention_mask, DType::kBool), {1, 2});           // [B, 1, 1, T]
  allowed = g.logical_and(g.unsqueeze(allowed, {0, 1}), keys);                      // [B, 1, S, T]
  return g.where(allowed, g.const_f32(0.0f), g.const_f32(std::numeric_limits<float>::lowest()));
}

// cos/sin [B, 1, S, rot] for position_ids [B, S], as transformers' rotary embedding (float32 products).
std::pair<Value, Value> rotary_tables(GraphBuilder& g, const RotarySpec& r, const Value& position_ids) {
  auto s = g.scope("rotary_embedding");
  Value inv = g.const_f32s(r.inv_freq(r.scaling == RotarySpec::Scaling::kLongRope ? &r.short_factor : nullptr),
                           "rotary.inv_freq");
  if (r.scaling == RotarySpec::Scaling::kLongRope) {
    // transformers switches to the long factors when max(position_ids) + 1 exceeds the original context.
    Value long_inv = g.const_f32s(r.inv_freq(&r.long_factor), "rotary.inv_freq_long");
    Value longest = g.add(g.op("ReduceMax", {g.reshape(position_ids, {-1})}, {GraphBuilder::Attr::Int("keepdims", 0)}),
                          g.const_i64({1}, true));
    inv = g.where(g.greater(longest, g.const_i64({r.original_max_positions}, true)), long_inv, inv);
  }
  Value pos = g.unsqueeze(g.cast(position_ids, DType::kF32), {2});  // [B, S, 1]
  Value freqs = g.mul(pos, inv);                                     // [B, S, rot / 2]
  Value emb = g.concat({freqs, freqs}, -1);
  Value cos = g.op("Cos", {emb}), sin = g.op("Sin", {emb});
  if (r.attention_factor != 1) {
    Value f = g.const_f32(static_cast<float>(r.attention_factor));
    cos = g.mul(cos, f);
    sin = g.mul(sin, f);
  }
  return {g.unsqueeze(cos, {1}), g.unsqueeze(sin, {1})};
}

// cos/sin caches [max_positions, rot / 2] for RotaryEmbedding: cos(p * inv_freq) * attention_factor, the
// float32 product as transformers computes it. Long-RoPE chooses between two pairs by the longest position.
std::pair<Value, Value> rotary_caches(GraphBuilder& g, const RotarySpec& r, int64_t max_positions,
                                      const Value& position_ids) {
  auto s = g.scope("rotary_cache");
  auto tables = [&](const std::vector<float>& inv, const std::string& name) {
    const size_t half = inv.size();
    std::vector<float> c(static_cast<size_t>(max_positions) * half), sn(c.size());
    for (int64_t p = 0; p < max_positions; ++p)
      for (size_t j = 0; j < half; ++j) {
        const float f = static_cast<float>(p) * inv[j];
        c[static_cast<size_t>(p) * half + j] = std::cos(f) * static_cast<float>(r.attention_factor);
        sn[static_cast<size_t>(p) * half + j] = std::sin(f) * static_cast<float>(r.attention_factor);
      }
    const Shape dims{max_positions, static_cast<int64_t>(half)};
    return std::pair{g.initializer(name + ".cos", TensorData::from_vector(DType::kF32, dims, c)),
                     g.initializer(name + ".sin", TensorData::from_vector(DType::kF32, dims, sn))};
  };
  const bool longrope = r.scaling == RotarySpec::Scaling::kLongRope;
  auto caches = tables(r.inv_freq(longrope ? &r.short_factor : nullptr), "rotary");
  if (!longrope) return caches;
  auto long_caches = tables(r.inv_freq(&r.long_factor), "rotary_long");
  Value longest = g.add(g.op("ReduceMax", {g.reshape(position_ids, {-1})}, {GraphBuilder::Attr::Int("keepdims", 0)}),
                        g.const_i64({1}, true));
  Value use_long = g.greater(longest, g.const_i64({r.original_max_positions}, true));
  return {g.where(use_long, long_caches.first, caches.first), g.where(use_long, long_caches.second, caches.second)};
}

}  // namespace

namespace {

// logits [B, S, vocab] = h [B, S, hidden] @ table^T (+ bias [1, vocab]) with the embedding table itself: no
// second copy of the table in the file. Two forms:
//  - Gemm(h, table, transB=1) on h flattened to [B*S, hidden] (`matmul` false): what the quantizers recognize
//    as a tied head (the N×K table read in place), and what decoder-only LMs keep.
//  - MatMul(h, Transpose(table)) (+ Add bias) (`matmul` true, encoder-decoders): ONNX Runtime folds the
//    Transpose at session load and prepacks the MatMul's constant B, then frees the folded copy (a loaded
//    session's anonymous memory is the same as Gemm's; the load may peak at one more table). The MatMul
//    writes [B, S, vocab] itself (no Reshape copy of the logits), ONNX Runtime folds T5's d_model^-0.5 into it
//    (FusedMatMul alpha), and its kernel time per decode step was 1-13 % below Gemm's (README, seq2seq rows).
Value tied_head(GraphBuilder& g, Weights& w, const Value& h, const std::string& table, int64_t vocab, int64_t hidden,
                const std::string& bias, bool matmul) {
  if (matmul) {
    Value logits = g.matmul(h, g.transpose(w.get(table, {vocab, hidden}), {1, 0}));
    return bias.empty() ? logits : g.add(logits, w.get(bias, {1, vocab}));
  }
  std::vector<Value> in{g.reshape(h, {-1, hidden}), w.get(table, {vocab, hidden})};
  if (!bias.empty()) in.push_back(w.get(bias, {1, vocab}));
  Value flat = g.op("Gemm", in, {GraphBuilder::Attr::Int("transB", 1)});
  return g.op("Reshape", {flat, g.concat({g.dim(h, 0), g.dim(h, 1), g.const_i64({vocab})}, 0)});
}

}  // namespace

std::vector<GraphOutput> build_decoder(BuildContext& ctx, Weights& w, const DecoderSpec& spec,
                                       const DecoderNames& names) {
  auto& g = ctx.graph;
  const std::string& cfg = ctx.config.file();
  const Dim past("past_sequence_length"), total("total_sequence_length");
  Value input_ids = g.input("input_ids", DType::kI64, {ctx.batch, ctx.seq}, InputSample::Ids(spec.vocab));
  Value attention_mask = g.input("attention_mask", DType::kI64, {ctx.batch, total}, InputSample::Mask(true));
  Value position_ids = g.input("position_ids", DType::kI64, {ctx.batch, ctx.seq}, InputSample::Positions());
  const int64_t n_layers = static_cast<int64_t>(spec.layers.size());
  // config.json and the weights must agree on the depth: missing layers are reported by Weights::check() with
  // the other missing tensors; extra ones would silently be dropped.
  if (w.has(names.layer.at(n_layers).attn_norm + ".weight"))
    ctx.config.fail("num_hidden_layers is " + std::to_string(n_layers) + " but the checkpoint has more layers (" +
                    names.layer.at(n_layers).attn_norm + ".weight exists)");
  std::vector<std::pair<Value, Value>> past_kv;
  for (int64_t i = 0; i < n_layers; ++i) {
    const AttentionSpec& a = spec.layers[static_cast<size_t>(i)].attention;
    const std::vector<Dim> dims{ctx.batch, a.num_kv_heads, past, a.head_dim};
    const std::string p = "past_key_values." + std::to_string(i), pr = "present." + std::to_string(i);
    Value k = g.input(p + ".key", DType::kF32, dims, InputSample::State(pr + ".key"));
    Value v = g.input(p + ".value", DType::kF32, dims, InputSample::State(pr + ".value"));
    past_kv.emplace_back(k, v);
  }

  Value x;
  {
    auto s = g.scope("embeddings");
    x = layers::embedding(g, w, input_ids, names.embed_tokens, spec.vocab, spec.hidden);
    if (spec.embedding_scale != 0) x = g.mul(x, g.const_f32(static_cast<float>(spec.embedding_scale)));
    if (spec.learned_positions)
      x = g.add(x, layers::embedding(g, w, position_ids, names.embed_positions, spec.learned_positions, spec.hidden));
  }

  std::map<std::optional<int64_t>, Value> masks;
  std::map<std::vector<float>, std::pair<Value, Value>> rotaries;
  AttentionInputs shared;
  if (uses_group_query_attention(g, spec.layers.front().attention)) {
    // GroupQueryAttention's lengths: every row is T long (padding is in the mask bias).
    shared.position_ids = position_ids;
    auto s = g.scope("lengths");
    Value total_i64 = g.dim(attention_mask, 1);
    shared.total_length = g.cast(g.squeeze(total_i64, {0}), DType::kI32);
    Value batch = g.dim(input_ids, 0);
    shared.seqlens_k = g.cast(g.op("Expand", {g.sub(total_i64, g.const_i64({1})), batch}), DType::kI32);
  }
  std::vector<GraphOutput> presents;
  Value h;  // the normalized input of the next sub-block
  for (int64_t i = 0; i < n_layers; ++i) {
    const BlockSpec& b = spec.layers[static_cast<size_t>(i)];
    const LayerNames n = names.layer.at(i);
    AttentionInputs in = shared;
    auto mask = masks.find(b.attention.sliding_window);
    if (mask == masks.end())
      mask = masks.emplace(b.attention.sliding_window,
                           causal_mask_bias(g, input_ids, attention_mask, b.attention.sliding_window)).first;
    in.mask_bias = mask->second;
    if (b.attention.rotary) {
      const std::vector<float> key = b.attention.rotary->inv_freq();
      auto r = rotaries.find(key);
      if (r == rotaries.end())
        r = rotaries.emplace(key, uses_group_query_attention(g, b.attention) ? rotary_caches(g, *b.attention.rotary, spec.max_positions, position_ids)
                                            : rotary_tables(g, *b.attention.rotary, position_ids)).first;
      in.cos = r->second.first;
      in.sin = r->second.second;
    }
    in.past_key = past_kv[static_cast<size_t>(i)].first;
    in.past_value = past_kv[static_cast<size_t>(i)].second;

    auto layer = g.scope("layers." + std::to_string(i));
    if (i == 0) h = norm(g, w, x, b.norm, n.attn_norm, b.hidden, b.eps, spec.norm_bias);
    AttentionOutputs att = self_attention(g, w, h, b, n, in);
    std::tie(x, h) = residual_norm(g, w, x, att.context, b.norm, n.mlp_norm, b.hidden, b.eps, spec.norm_bias);
    Value m = mlp(g, w, h, b, n, cfg);
    // The residual and the next norm: the next layer's input norm, or the final norm.
    const bool last = i + 1 == n_layers;
    const std::string next = last ? names.final_norm : names.layer.at(i + 1).attn_norm;
    const NormKind next_kind = last ? spec.final_norm : spec.layers[static_cast<size_t>(i + 1)].norm;
    std::tie(x, h) = residual_norm(g, w, x, m, next_kind, next, b.hidden, b.eps, spec.norm_bias);
    const std::vector<Dim> dims{ctx.batch, b.attention.num_kv_heads, total, b.attention.head_dim};
    presents.push_back({"present." + std::to_string(i) + ".key", att.present_key, dims});
    presents.push_back({"present." + std::to_string(i) + ".value", att.present_value, dims});
  }

  Value logits;
  {
    auto s = g.scope("lm_head");
    // Tied heads read the embedding table itself (tied_head); an untied head must be in the checkpoint.
    if (spec.tie_word_embeddings)
      logits = tied_head(g, w, h, names.embed_tokens, spec.vocab, spec.hidden, "", false);
    else
      logits = g.matmul(h, w.get_transposed(names.lm_head, {spec.vocab, spec.hidden}));
  }
  std::vector<GraphOutput> outs{{"logits", logits, {ctx.batch, ctx.seq, spec.vocab}}};
  outs.insert(outs.end(), presents.begin(), presents.end());
  return outs;
}

// ---------------------------------------------------------------------------------------------------------------
// Encoder-decoder models
// ---------------------------------------------------------------------------------------------------------------

namespace {

// The residual stream of one stack. Pre-norm blocks (T5, mBART) add each sub-block's output to the stream and
// normalize the stream before the next one; post-norm blocks (BART, Marian) normalize after each residual add.
// The add and the following norm become one Skip(Simplified)LayerNormalization in the fused lowering.
class Residual {
 public:
  Residual(GraphBuilder& g, Weights& w, Value x, int64_t dim, bool norm_bias)
      : g_(g), w_(w), x_(std::move(x)), dim_(dim), bias_(norm_bias) {}

  // Runs f on the sub-block's input and adds its result with the block's norm (`norm_name`) where it belongs.
  template <typename F>
  void sublayer(const BlockSpec& b, const std::string& norm_name, F f) {
    if (b.placement == NormPlacement::kPre) {
      Value h = normed(b, norm_name);
      pending_ = f(h);
      return;
    }
    Value x = flush();
    x_ = residual_norm(g_, w_, x, f(x), b.norm, norm_name, dim_, b.eps, bias_).second;
  }
  // The stream normalized by `norm_name` (a pending sub-block output is added first, fused with the norm).
  Value normed(const BlockSpec& b, const std::string& norm_name) {
    if (pending_.empty()) return norm(g_, w_, x_, b.norm, norm_name, dim_, b.eps, bias_);
    auto [sum, h] = residual_norm(g_, w_, x_, pending_, b.norm, norm_name, dim_, b.eps, bias_);
    x_ = sum;
    pending_.clear();
    return h;
  }
  // The stream with any pending output added.
  Value flush() {
    if (!pending_.empty()) {
      x_ = g_.add(x_, pending_);
      pending_.clear();
    }
    return x_;
  }

 private:
  GraphBuilder& g_;
  Weights& w_;
  Value x_, pending_;
  int64_t dim_;
  bool bias_;
};

// T5's bucket of a relative position (key - query), as transformers computes it: exact buckets for small
// distances, logarithmic ones (float32 arithmetic) up to max_distance, one bucket beyond.
int64_t relative_bucket(int64_t rel, bool bidirectional, int64_t num_buckets, int64_t max_distance) {
  int64_t bucket = 0;
  if (bidirectional) {
    num_buckets /= 2;
    if (rel > 0) bucket += num_buckets;
    rel = rel < 0 ? -rel : rel;
  } else {
    rel = rel < 0 ? -rel : 0;
  }
  const int64_t max_exact = num_buckets / 2;
  if (rel < max_exact) return bucket + rel;
  const float ratio = static_cast<float>(rel) / static_cast<float>(max_exact);
  const float scale = static_cast<float>(std::log(static_cast<double>(max_distance) / static_cast<double>(max_exact)));
  const float large = std::log(ratio) / scale * static_cast<float>(num_buckets - max_exact);
  return bucket + std::min<int64_t>(max_exact + static_cast<int64_t>(large), num_buckets - 1);
}

// The relative position bias [1, heads, S, T] for queries at q_pos [S] and keys at k_pos [T] (int64). Buckets
// saturate beyond max_distance, so a table over the clipped relative positions [-max, max] (computed at export)
// gives every bucket; the bias rows are gathered from the checkpoint's [num_buckets, heads] table.
Value relative_position_bias(GraphBuilder& g, Weights& w, const std::string& name,
                             const Seq2SeqSpec::RelativeBias& r, int64_t heads, const Value& q_pos,
                             const Value& k_pos, bool bidirectional) {
  auto s = g.scope("relative_position_bias");
  const int64_t md = r.max_distance;
  std::vector<int64_t> table;
  for (int64_t rel = -md; rel <= md; ++rel) table.push_back(relative_bucket(rel, bidirectional, r.num_buckets, md));
  Value rel = g.sub(g.unsqueeze(k_pos, {0}), g.unsqueeze(q_pos, {1}));  // [S, T]
  Value clipped = g.op("Clip", {rel, g.const_i64({-md}, true), g.const_i64({md}, true)});
  Value buckets = g.gather(g.const_i64(table), g.add(clipped, g.const_i64({md}, true)), 0);
  Value bias = g.gather(w.get(name + ".weight", {r.num_buckets, heads}), buckets, 0);  // [S, T, heads]
  return g.unsqueeze(g.transpose(bias, {2, 0, 1}), {0});
}

// [B, T] 0/1 mask → additive bias [B, 1, 1, T]: 0 where attended, float32's lowest where padded.
Value padding_bias(GraphBuilder& g, const Value& mask) {
  auto s = g.scope("padding_mask");
  Value keep = g.unsqueeze(g.cast(mask, DType::kBool), {1, 2});
  return g.where(keep, g.const_f32(0.0f), g.const_f32(std::numeric_limits<float>::lowest()));
}

// x [B, S, hidden] → [B, heads, S, head_dim] through the projection `name`.
Value project_heads(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, const BlockSpec& b) {
  const AttentionSpec& a = b.attention;
  return split_heads(g, project(g, w, x, name, b.hidden, a.num_heads * a.head_dim, a.qkv_bias, b.conv1d), a.num_heads,
                     a.head_dim);
}

// Attention of queries from x, then the output projection `o` (the encoder's self-attention, the decoder's
// self-attention with its past; cross-attention is split_cross_attention). Plain: the projections and
// attention_core. Fused: one com.microsoft MultiHeadAttention node (past ++ new inside, additive bias for the
// causal mask and the relative positions, the padding as key_padding_mask):
//
//   x ─MatMul(W_q)(+b)─┐
//   x ─MatMul(W_k)(+b)─┼─► MultiHeadAttention ─MatMul(W_o)(+b)─► out
//   x ─MatMul(W_v)(+b)─┘    ▲   ▲            └─► present K/V (self-attention with a past)
//        key_padding_mask (int32), bias [1|B, 1|H, S, T], past K/V ───┘
AttentionOutputs seq2seq_attention(GraphBuilder& g, Weights& w, const Value& x, const std::string& q,
                                   const std::string& k, const std::string& v, const std::string& o,
                                   const BlockSpec& b, const AttentionInputs& in) {
  const AttentionSpec& a = b.attention;
  const int64_t width = a.num_heads * a.head_dim;
  AttentionOutputs out;
  if (!g.fused()) {
    out = attention_core(g, project_heads(g, w, x, q, b), project_heads(g, w, x, k, b), project_heads(g, w, x, v, b),
                         a, in);
  } else {
    auto proj = [&](const std::string& name) { return project(g, w, x, name, b.hidden, width, a.qkv_bias, b.conv1d); };
    const bool past = !in.past_key.empty();
    double scale = 1.0;
    if (a.scaling != ScoreScaling::kNone) scale = 1.0 / std::sqrt(static_cast<double>(a.head_dim));
    auto outs = g.node("MultiHeadAttention",
                       {proj(q), proj(k), proj(v), /*bias=*/"", in.key_padding_mask, in.mask_bias, in.past_key,
                        in.past_value},
                       {GraphBuilder::Attr::Int("num_heads", a.num_heads),
                        GraphBuilder::Attr::Float("scale", static_cast<float>(scale))},
                       past ? 3 : 1, GraphBuilder::kMsDomain);
    out.context = outs[0];
    if (past) {
      out.present_key = outs[1];
      out.present_value = outs[2];
    }
  }
  out.context = project(g, w, out.context, o, width, b.hidden, a.o_bias, b.conv1d);
  return out;
}

// Cross-attention over the cached encoder K/V and the encoder rows projected at this step, without joining the
// two (one of them is empty: the past on the first step, the new rows on the steps with a cache). The scores of
// each part are joined on the key axis — [B, heads, S, T], small next to K/V — for one softmax, whose
// probabilities are split again: context = P_past·V_past + P_new·V_new (a part with no keys contributes exact
// zeros). The same arithmetic as attention_core over past ++ new, element by element, but the large cross K/V
// are never copied at a decode step:
//
//   q ─MatMul(K_pastᵀ)─┐                              ┌─Slice[:P]─MatMul(V_past)─┐
//   q ─MatMul(K_newᵀ)──┴─Concat(-1)─scale─+bias─Softmax┴─Slice[P:]─MatMul(V_new)──┴─Add─► context
Value split_cross_attention(GraphBuilder& g, Weights& w, const Value& x, const std::string& q_name,
                            const Value& past_k, const Value& past_v, const Value& new_k, const Value& new_v,
                            const std::string& o, const BlockSpec& b, const Value& mask_bias) {
  const AttentionSpec& a = b.attention;
  const double d = static_cast<double>(a.head_dim);
  Value q = project_heads(g, w, x, q_name, b);
  if (a.scaling == ScoreScaling::kDivideQuery) q = g.div(q, g.const_f32(static_cast<float>(std::sqrt(d))));
  Value scores = g.concat(
      {g.matmul(q, g.transpose(past_k, {0, 1, 3, 2})), g.matmul(q, g.transpose(new_k, {0, 1, 3, 2}))}, 3);
  if (a.scaling == ScoreScaling::kDivideScores)
    scores = g.div(scores, g.const_f32(static_cast<float>(std::sqrt(d))));
  else if (a.scaling == ScoreScaling::kMultiplyScores)
    scores = g.mul(scores, g.const_f32(static_cast<float>(std::pow(d, -0.5))));
  if (a.inverse_layer_scale != 1) scores = g.div(scores, g.const_f32(static_cast<float>(a.inverse_layer_scale)));
  if (!mask_bias.empty()) scores = g.add(scores, mask_bias);
  Value probs = g.softmax(scores, -1);
  Value axis = g.const_i64({3}), split = g.dim(past_k, 2);
  Value p_past = g.slice(probs, g.const_i64({0}), split, axis);
  Value p_new = g.slice(probs, split, g.const_i64({std::numeric_limits<int64_t>::max()}), axis);
  Value ctx = g.add(g.matmul(p_past, past_v), g.matmul(p_new, new_v));  // [B, heads, S, d]
  ctx = g.reshape(g.transpose(ctx, {0, 2, 1, 3}), {0, 0, a.num_heads * a.head_dim});
  return project(g, w, ctx, o, a.num_heads * a.head_dim, b.hidden, a.o_bias, b.conv1d);
}

// Token embeddings (scaled) + positions at `positions` [S] (+ the embedding norm).
Value seq2seq_embeddings(GraphBuilder& g, Weights& w, const Seq2SeqSpec& spec, const Seq2SeqNames::Stack& names,
                         const std::string& table, int64_t rows, const Value& ids, const Value& positions) {
  auto s = g.scope("embeddings");
  Value x = layers::embedding(g, w, ids, table, rows, spec.hidden);
  if (spec.embedding_scale != 0) x = g.mul(x, g.const_f32(static_cast<float>(spec.embedding_scale)));
  if (spec.positions == Seq2SeqSpec::Positions::kLearned) {
    Value at = spec.position_offset ? g.add(positions, g.const_i64({spec.position_offset}, true)) : positions;
    x = g.add(x, layers::embedding(g, w, at, names.embed_positions, spec.max_positions + spec.position_offset,
                                   spec.hidden));
  } else if (spec.positions == Seq2SeqSpec::Positions::kSinusoidal) {
    // Marian: sin of every frequency in the first half of each row, cos in the second (computed in double, as
    // transformers does with numpy, then rounded to float32). Not stored in checkpoints.
    const int64_t d = spec.hidden, half = (d + 1) / 2;
    std::vector<float> t(static_cast<size_t>(spec.max_positions * d));
    for (int64_t p = 0; p < spec.max_positions; ++p)
      for (int64_t j = 0; j < d; ++j) {
        const int64_t k = j < half ? 2 * j : 2 * (j - half) + 1;  // the feature of position_enc this column takes
        const double angle = static_cast<double>(p) / std::pow(10000.0, static_cast<double>(2 * (k / 2)) / d);
        t[static_cast<size_t>(p * d + j)] = static_cast<float>(j < half ? std::sin(angle) : std::cos(angle));
      }
    Value sinusoids =
        g.initializer(names.embed_positions, TensorData::from_vector(DType::kF32, {spec.max_positions, d}, t));
    x = g.add(x, g.gather(sinusoids, positions, 0));
  }
  if (spec.embedding_norm) {
    const BlockSpec& b = spec.encoder_layers.front();
    x = norm(g, w, x, b.norm, names.embedding_norm, spec.hidden, b.eps, spec.norm_bias);
  }
  return x;
}

void check_depth(const BuildContext& ctx, const Weights& w, const LayerNames& layer, int64_t n, const char* key) {
  // config.json and the checkpoint must agree on the depth: missing layers are reported with the other missing
  // tensors by Weights::check(); extra ones would silently be dropped.
  const std::string next = layer.at(n).q + ".weight";
  if (w.has(next))
    ctx.config.fail(std::string(key) + " is " + std::to_string(n) + " but the checkpoint has more layers (" + next +
                    " exists)");
}

std::vector<GraphOutput> build_encoder_graph(BuildContext& ctx, Weights& w, const Seq2SeqSpec& spec,
                                             const Seq2SeqNames& names) {
  auto& g = ctx.graph;
  const Dim enc_seq("encoder_sequence_length");
  Value ids = g.input("input_ids", DType::kI64, {ctx.batch, enc_seq}, InputSample::Ids(spec.vocab));
  Value mask = g.input("attention_mask", DType::kI64, {ctx.batch, enc_seq}, InputSample::Mask(false));
  auto s = g.scope("encoder");
  Value seq = g.squeeze(g.dim(ids, 1), {0});
  Value positions = g.range(g.const_i64({0}, true), seq, g.const_i64({1}, true));
  Value x = seq2seq_embeddings(g, w, spec, names.encoder, names.embed_tokens, spec.vocab, ids, positions);
  AttentionInputs in;
  Value position_bias;
  if (spec.relative_bias)
    position_bias = relative_position_bias(g, w, names.encoder.relative_bias, *spec.relative_bias,
                                           spec.encoder_layers.front().attention.num_heads, positions, positions,
                                           /*bidirectional=*/true);
  if (g.fused()) {
    in.key_padding_mask = g.cast(mask, DType::kI32);
    in.mask_bias = position_bias;
  } else {
    in.mask_bias = padding_bias(g, mask);
    if (!position_bias.empty()) in.mask_bias = g.add(position_bias, in.mask_bias);
  }
  const std::string& cfg = ctx.config.file();
  Residual r(g, w, x, spec.hidden, spec.norm_bias);
  const int64_t n_layers = static_cast<int64_t>(spec.encoder_layers.size());
  check_depth(ctx, w, names.encoder.layer, n_layers, "the encoder's layer count");
  for (int64_t i = 0; i < n_layers; ++i) {
    const BlockSpec& b = spec.encoder_layers[static_cast<size_t>(i)];
    const LayerNames n = names.encoder.layer.at(i);
    auto layer = g.scope("layers." + std::to_string(i));
    r.sublayer(b, n.attn_norm, [&](const Value& h) {
      auto a = g.scope("attention");
      return seq2seq_attention(g, w, h, n.q, n.k, n.v, n.o, b, in).context;
    });
    r.sublayer(b, n.mlp_norm, [&](const Value& h) { return mlp(g, w, h, b, n, cfg); });
  }
  Value out = spec.final_norm ? r.normed(spec.encoder_layers.back(), names.encoder.final_norm) : r.flush();
  return {{"last_hidden_state", out, {ctx.batch, enc_seq, spec.hidden}}};
}

std::vector<GraphOutput> build_decoder_graph(BuildContext& ctx, Weights& w, const Seq2SeqSpec& spec,
                                             const Seq2SeqNames& names) {
  auto& g = ctx.graph;
  const Dim enc_seq("encoder_sequence_length"), past("past_sequence_length"), total("total_sequence_length"),
      enc_past("past_encoder_sequence_length"), enc_present("present_encoder_sequence_length");
  Value ids = g.input("input_ids", DType::kI64, {ctx.batch, ctx.seq}, InputSample::Ids(spec.decoder_vocab));
  Value enc_mask = g.input("encoder_attention_mask", DType::kI64, {ctx.batch, enc_seq}, InputSample::Mask(false));
  Value enc = g.input("encoder_hidden_states", DType::kF32, {ctx.batch, enc_seq, spec.hidden}, InputSample::State(""));
  const int64_t n_layers = static_cast<int64_t>(spec.decoder_layers.size());
  struct Past {
    Value key, value, enc_key, enc_value;
  };
  std::vector<Past> pasts;
  for (int64_t i = 0; i < n_layers; ++i) {
    const AttentionSpec& a = spec.decoder_layers[static_cast<size_t>(i)].attention;
    const std::string p = "past_key_values." + std::to_string(i), pr = "present." + std::to_string(i);
    Past kv;
    auto in = [&](const std::string& which, const Dim& len) {
      return g.input(p + which, DType::kF32, {ctx.batch, a.num_heads, len, a.head_dim},
                     InputSample::State(pr + which));
    };
    kv.key = in(".decoder.key", past);
    kv.value = in(".decoder.value", past);
    kv.enc_key = in(".encoder.key", enc_past);
    kv.enc_value = in(".encoder.value", enc_past);
    pasts.push_back(kv);
  }
  Value use_cache = g.input("use_cache_branch", DType::kBool, {1}, InputSample::CacheFlag());

  auto s = g.scope("decoder");
  Value seq = g.squeeze(g.dim(ids, 1), {0});
  Value past_len = g.squeeze(g.dim(pasts.front().key, 2), {0});
  Value total_len = g.add(past_len, seq);
  Value one = g.const_i64({1}, true);
  Value q_pos = g.range(past_len, total_len, one), k_pos = g.range(g.const_i64({0}, true), total_len, one);
  const std::string& dec_table = names.decoder_embed_tokens.empty() ? names.embed_tokens : names.decoder_embed_tokens;
  Value x = seq2seq_embeddings(g, w, spec, names.decoder, dec_table, spec.decoder_vocab, ids, q_pos);

  AttentionInputs self_in;
  {
    auto m = g.scope("mask");
    Value allowed = g.less_or_equal(g.unsqueeze(k_pos, {0}), g.unsqueeze(q_pos, {1}));  // [S, T]
    self_in.mask_bias = g.where(allowed, g.const_f32(0.0f), g.const_f32(std::numeric_limits<float>::lowest()));
    if (g.fused()) self_in.mask_bias = g.unsqueeze(self_in.mask_bias, {0, 1});  // MultiHeadAttention wants 4-D
  }
  if (spec.relative_bias)
    self_in.mask_bias = g.add(relative_position_bias(g, w, names.decoder.relative_bias, *spec.relative_bias,
                                                     spec.decoder_layers.front().attention.num_heads, q_pos, k_pos,
                                                     /*bidirectional=*/false),
                              self_in.mask_bias);
  // Cross-attention (split_cross_attention, plain ops in both lowerings: com.microsoft MultiHeadAttention would
  // need past ++ new joined, a copy of the whole cross cache at every step) masks the encoder padding additively.
  Value cross_bias = padding_bias(g, enc_mask);
  // Cross-attention K/V: projected from the encoder states on the first step, the cached ones afterwards. The
  // encoder states are cut to 0 rows when use_cache_branch is set, so the new projection is empty then, and the
  // past is empty on the first step. present.{i}.encoder.* is the new projection only: the cross cache on the
  // first step, 0 rows on the steps with a cache (the caller keeps the first step's, as optimum's merged decoder
  // expects: its cache branch returns empty cross-attention presents too).
  //
  // The projection runs once per distinct encoder row. Beam search hands the decoder each input's encoder states
  // repeated once per beam (transformers' generate() expands them after running the encoder once), so with 4 beams
  // 3 of every 4 projected rows would repeat a row already projected: consecutive equal rows (compared exactly)
  // are projected once and the result is gathered back to every row of the batch. Equal inputs give equal
  // outputs, so this changes no number; a batch without repeats pays one comparison of the encoder states and a
  // copy of each layer's cross K/V.
  Value enc_rows, row_of;
  {
    auto c = g.scope("cross_kv_rows");
    Value rows = g.where(use_cache, g.const_i64({0}), g.dim(enc, 1));
    Value states = g.slice(enc, g.const_i64({0}), rows, g.const_i64({1}));  // [B, S_enc or 0, hidden]
    const Value zero = g.const_i64({0}), one = g.const_i64({1}), batch_axis = g.const_i64({0});
    Value later = g.slice(states, one, g.const_i64({std::numeric_limits<int64_t>::max()}), batch_axis);
    Value earlier = g.slice(states, zero, g.const_i64({-1}), batch_axis);
    // differs[i] = 1 where row i + 1 is not row i (sum of unequal elements > 0; 0 for empty rows).
    Value unequal = g.reduce_sum(g.cast(g.op("Not", {g.op("Equal", {later, earlier})}), DType::kF32), {1, 2}, false);
    Value differs = g.cast(g.greater(unequal, g.const_f32(0.0f)), DType::kF32);
    Value starts = g.concat({g.const_f32s({1.0f}, "cross_kv_rows.first"), differs}, 0);  // [B]: 1 where a run starts
    row_of = g.sub(g.cast(g.op("CumSum", {starts, g.const_i64({0}, true)}), DType::kI64), one);  // [B] → run index
    enc_rows = g.gather(states, g.squeeze(g.op("NonZero", {starts}), {0}), 0);  // one row per run
  }

  const std::string& cfg = ctx.config.file();
  Residual r(g, w, x, spec.hidden, spec.norm_bias);
  check_depth(ctx, w, names.decoder.layer, n_layers, "the decoder's layer count");
  std::vector<GraphOutput> self_presents, cross_presents;
  for (int64_t i = 0; i < n_layers; ++i) {
    const BlockSpec& b = spec.decoder_layers[static_cast<size_t>(i)];
    const LayerNames n = names.decoder.layer.at(i);
    const Past& p = pasts[static_cast<size_t>(i)];
    auto layer = g.scope("layers." + std::to_string(i));
    AttentionOutputs self_att;
    r.sublayer(b, n.attn_norm, [&](const Value& h) {
      auto a = g.scope("self_attention");
      AttentionInputs in = self_in;
      in.past_key = p.key;
      in.past_value = p.value;
      self_att = seq2seq_attention(g, w, h, n.q, n.k, n.v, n.o, b, in);
      return self_att.context;
    });
    Value cross_k, cross_v;
    r.sublayer(b, n.cross_norm, [&](const Value& h) {
      auto a = g.scope("cross_attention");
      cross_k = g.gather(project_heads(g, w, enc_rows, n.cross_k, b), row_of, 0);
      cross_v = g.gather(project_heads(g, w, enc_rows, n.cross_v, b), row_of, 0);
      return split_cross_attention(g, w, h, n.cross_q, p.enc_key, p.enc_value, cross_k, cross_v, n.cross_o, b,
                                   cross_bias);
    });
    r.sublayer(b, n.mlp_norm, [&](const Value& h) { return mlp(g, w, h, b, n, cfg); });
    const AttentionSpec& a = b.attention;
    const std::string pr = "present." + std::to_string(i);
    self_presents.push_back({pr + ".decoder.key", self_att.present_key, {ctx.batch, a.num_heads, total, a.head_dim}});
    self_presents.push_back({pr + ".decoder.value", self_att.present_value, {ctx.batch, a.num_heads, total, a.head_dim}});
    cross_presents.push_back({pr + ".encoder.key", cross_k, {ctx.batch, a.num_heads, enc_present, a.head_dim}});
    cross_presents.push_back({pr + ".encoder.value", cross_v, {ctx.batch, a.num_heads, enc_present, a.head_dim}});
  }
  Value h = spec.final_norm ? r.normed(spec.decoder_layers.back(), names.decoder.final_norm) : r.flush();

  Value logits;
  {
    auto lm = g.scope("lm_head");
    // final_logits_bias is a buffer of zeros unless the model was trained with it (Marian and BART checkpoints
    // hold zeros): adding zeros changes no logit, so the Add over [B, S, vocab] is left out.
    const bool logits_bias =
        spec.final_logits_bias && !w.all_zero(names.final_logits_bias, {1, spec.decoder_vocab});
    if (spec.tie_word_embeddings) {
      if (spec.tied_head_scale != 0) h = g.mul(h, g.const_f32(static_cast<float>(spec.tied_head_scale)));
      logits = tied_head(g, w, h, dec_table, spec.decoder_vocab, spec.hidden,
                         logits_bias ? names.final_logits_bias : "", !g.quantization_source());
    } else {
      logits = g.matmul(h, w.get_transposed(names.lm_head, {spec.decoder_vocab, spec.hidden}));
      if (logits_bias) logits = g.add(logits, w.get(names.final_logits_bias, {1, spec.decoder_vocab}));
    }
  }
  // optimum pairs present.{i}.decoder.* with past_key_values.{i}.decoder.* by position: self-attention outputs
  // first, then cross-attention, layer by layer, key before value (the inputs' order per layer).
  std::vector<GraphOutput> outs{{"logits", logits, {ctx.batch, ctx.seq, spec.decoder_vocab}}};
  for (size_t i = 0; i < self_presents.size(); i += 2) {
    outs.push_back(self_presents[i]);
    outs.push_back(self_presents[i + 1]);
    outs.push_back(cross_presents[i]);
    outs.push_back(cross_presents[i + 1]);
  }
  return outs;
}

}  // namespace

std::vector<GraphOutput> build_seq2seq(BuildContext& ctx, Weights& w, const Seq2SeqSpec& spec,
                                       const Seq2SeqNames& names) {
  if (ctx.part == kEncoderGraph) return build_encoder_graph(ctx, w, spec, names);
  if (ctx.part == kDecoderMergedGraph) return build_decoder_graph(ctx, w, spec, names);
  throw std::logic_error("no encoder-decoder graph named '" + ctx.part + "'");
}

RotarySpec read_rotary(const ModelConfig& c, int64_t head_dim) {
  RotarySpec r;
  const nlohmann::json& raw = c.raw();
  // transformers 5 writes rope_parameters {rope_type, rope_theta, ...}; 4.x rope_theta + rope_scaling.
  const nlohmann::json* params = nullptr;
  if (raw.contains("rope_parameters") && raw["rope_parameters"].is_object()) params = &raw["rope_parameters"];
  else if (raw.contains("rope_scaling") && raw["rope_scaling"].is_object()) params = &raw["rope_scaling"];
  auto num = [&](const char* key, double fallback) {
    if (!params) return fallback;
    auto it = params->find(key);
    return it != params->end() && it->is_number() ? it->get<double>() : fallback;
  };
  // 5.x moves rope_theta, partial_rotary_factor and original_max_position_embeddings into rope_parameters.
  r.theta = num("rope_theta", c.get_float("rope_theta", 10000.0));
  const double partial = num("partial_rotary_factor", c.get_float("partial_rotary_factor", 1.0));
  r.dim = static_cast<int64_t>(static_cast<double>(head_dim) * partial);
  if (r.dim <= 0 || r.dim > head_dim || r.dim % 2 != 0)
    c.fail("partial_rotary_factor " + std::to_string(partial) + " gives an unusable rotary dimension " +
           std::to_string(r.dim) + " for head_dim " + std::to_string(head_dim));
  if (!params) return r;
  std::string type = "default";
  for (const char* key : {"rope_type", "type"})
    if (params->contains(key) && (*params)[key].is_string()) {
      type = (*params)[key].get<std::string>();
      break;
    }
  const int64_t max_pos = c.get_int("max_position_embeddings", 0);
  if (type == "default") return r;
  if (type == "linear") {
    r.scaling = RotarySpec::Scaling::kLinear;
    r.factor = num("factor", 1.0);
  } else if (type == "llama3") {
    r.scaling = RotarySpec::Scaling::kLlama3;
    r.factor = num("factor", 8.0);
    r.low_freq_factor = num("low_freq_factor", 1.0);
    r.high_freq_factor = num("high_freq_factor", 4.0);
    r.original_max_positions = static_cast<int64_t>(num("original_max_position_embeddings", static_cast<double>(max_pos)));
  } else if (type == "longrope" || type == "su") {
    r.scaling = RotarySpec::Scaling::kLongRope;
    for (auto [key, out] : {std::pair{"short_factor", &r.short_factor}, std::pair{"long_factor", &r.long_factor}}) {
      auto it = params->find(key);
      if (it == params->end() || !it->is_array() || it->size() != static_cast<size_t>(r.dim / 2))
        c.fail(std::string("rope_scaling.") + key + " must be a list of " + std::to_string(r.dim / 2) + " numbers");
      for (const auto& v : *it) {
        if (!v.is_number()) c.fail(std::string("rope_scaling.") + key + " must hold numbers");
        out->push_back(v.get<double>());
      }
    }
    const bool has_original = c.has("original_max_position_embeddings") || params->contains("original_max_position_embeddings");
    r.original_max_positions = static_cast<int64_t>(
        num("original_max_position_embeddings", static_cast<double>(c.get_int("original_max_position_embeddings", max_pos))));
    double factor = num("factor", 1.0);
    if (has_original && r.original_max_positions > 0)
      factor = static_cast<double>(max_pos) / static_cast<double>(r.original_max_positions);
    r.attention_factor = num("attention_factor", -1);
    if (r.attention_factor < 0)
      r.attention_factor = factor <= 1.0 ? 1.0
                                         : std::sqrt(1 + std::log(factor) /
                                                             std::log(static_cast<double>(r.original_max_positions)));
  } else {
    c.fail("unsupported rope type '" + type + "' (supported: default, linear, llama3, longrope)");
  }
  if (r.factor <= 0) c.fail("rope scaling factor must be positive");
  return r;
}

}  // namespace trex::blocks
