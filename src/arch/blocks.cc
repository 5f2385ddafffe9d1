#include "arch/blocks.h"

#include <cmath>
#include <limits>
#include <map>
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
// Rotary runs in com.microsoft RotaryEmbedding at position_ids (transformers' positions, which skip left padding)
// from cos/sin caches computed at export, so cached keys equal the plain graph's. Padding, the causal mask and
// sliding windows come from the additive bias the plain graph uses.
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
  std::vector<Value> qkv_in{qkv, "", ""};
  if (a.qk_norm || a.rotary) {
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
                               in.total_length, /*cos_cache=*/"", /*sin_cache=*/"", /*position_ids=*/"", in.mask_bias};
  auto outs = g.node("GroupQueryAttention", inputs,
                     {GraphBuilder::Attr::Int("num_heads", a.num_heads),
                      GraphBuilder::Attr::Int("kv_num_heads", a.num_kv_heads),
                      GraphBuilder::Attr::Float("scale", static_cast<float>(scale))},
                     3, GraphBuilder::kMsDomain);
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
    // Tied heads share the embedding table (one copy in the file, transposed at run time); an untied head must
    // be in the checkpoint.
    if (spec.tie_word_embeddings)
      logits = g.matmul(h, g.transpose(w.get(names.embed_tokens, {spec.vocab, spec.hidden}), {1, 0}));
    else
      logits = g.matmul(h, w.get_transposed(names.lm_head, {spec.vocab, spec.hidden}));
  }
  std::vector<GraphOutput> outs{{"logits", logits, {ctx.batch, ctx.seq, spec.vocab}}};
  outs.insert(outs.end(), presents.begin(), presents.end());
  return outs;
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
