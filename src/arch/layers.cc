#include "arch/layers.h"

#include <cmath>
#include <limits>

#include "arch/blocks.h"
#include "util/error.h"

namespace trex::layers {

Inputs declare_inputs(BuildContext& ctx, bool with_token_types) {
  Inputs in;
  auto& g = ctx.graph;
  in.input_ids = g.input("input_ids", DType::kI64, {ctx.batch, ctx.seq});
  in.attention_mask = g.input("attention_mask", DType::kI64, {ctx.batch, ctx.seq});
  if (with_token_types) in.token_type_ids = g.input("token_type_ids", DType::kI64, {ctx.batch, ctx.seq});
  return in;
}

Value prepare_attention_mask(GraphBuilder& g, const Value& attention_mask) {
  auto s = g.scope("attention_mask");
  if (g.fused()) return g.cast(attention_mask, DType::kI32);
  Value m = g.cast(attention_mask, DType::kF32);
  Value inverted = g.sub(g.const_f32(1.0f), m);
  Value bias = g.mul(inverted, g.const_f32(std::numeric_limits<float>::lowest()));
  return g.unsqueeze(bias, {1, 2});
}

Value embeddings(GraphBuilder& g, Weights& w, const Inputs& in, const EmbeddingNames& names, const EmbeddingDims& d,
                 const Value& position_ids) {
  auto s = g.scope("embeddings");
  const bool has_types = !names.token_type.empty();
  const Shape type_shape{d.type_vocab, d.dim}, pos_shape{d.max_positions, d.dim};
  if (g.fused()) {
    // EmbedLayerNormalization: int32 ids; a constant token type is folded into the position table.
    Value pos_table = (has_types && in.token_type_ids.empty())
                          ? w.get_plus_row(names.position, pos_shape, names.token_type, type_shape, 0)
                          : w.get(names.position, pos_shape);
    const bool segments = has_types && !in.token_type_ids.empty();
    std::vector<Value> inputs = {g.cast(in.input_ids, DType::kI32),
                                 segments ? g.cast(in.token_type_ids, DType::kI32) : Value(),
                                 w.get(names.word, {d.vocab, d.dim}),
                                 pos_table,
                                 segments ? w.get(names.token_type, type_shape) : Value(),
                                 w.get(names.layer_norm + ".weight", {d.dim}),
                                 w.get(names.layer_norm + ".bias", {d.dim}),
                                 Value()};
    if (!position_ids.empty()) inputs.push_back(g.cast(position_ids, DType::kI32));
    return g.node("EmbedLayerNormalization", inputs, {GraphBuilder::Attr::Float("epsilon", d.eps)}, 2,
                  GraphBuilder::kMsDomain)[0];
  }
  Value x = embedding(g, w, in.input_ids, names.word, d.vocab, d.dim);
  if (has_types) {
    Value types = in.token_type_ids.empty() ? w.get_row(names.token_type, type_shape, 0)
                                            : embedding(g, w, in.token_type_ids, names.token_type, d.type_vocab, d.dim);
    x = g.add(x, types);
  }
  Value pos = position_ids.empty() ? leading_positions(g, w, in.input_ids, names.position, d.max_positions, d.dim)
                                   : embedding(g, w, position_ids, names.position, d.max_positions, d.dim);
  return layer_norm(g, w, g.add(x, pos), names.layer_norm, d.dim, d.eps);
}

Value linear(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t in, int64_t out, bool bias) {
  Value y = g.matmul(x, w.get_transposed(name + ".weight", {out, in}));
  if (bias) y = g.add(y, w.get(name + ".bias", {out}));
  return y;
}

Value layer_norm(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, int64_t dim, float eps) {
  return g.layer_norm(x, w.get(name + ".weight", {dim}), w.get(name + ".bias", {dim}), eps);
}

Value activation(GraphBuilder& g, const Value& x, const std::string& name, const std::string& config_file) {
  auto s = g.scope("act");
  if (name == "gelu") {  // exact: 0.5 x (1 + erf(x / sqrt 2))
    Value e = g.op("Erf", {g.div(x, g.const_f32(static_cast<float>(M_SQRT2)))});
    return g.mul(g.mul(x, g.add(e, g.const_f32(1.0f))), g.const_f32(0.5f));
  }
  if (name == "gelu_new" || name == "gelu_pytorch_tanh" || name == "gelu_fast") {
    // 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))
    Value x3 = g.mul(g.mul(x, x), x);
    Value inner = g.mul(g.add(x, g.mul(x3, g.const_f32(0.044715f))),
                        g.const_f32(static_cast<float>(std::sqrt(2.0 / M_PI))));
    return g.mul(g.mul(x, g.const_f32(0.5f)), g.add(g.tanh(inner), g.const_f32(1.0f)));
  }
  if (name == "quick_gelu") return g.mul(x, g.op("Sigmoid", {g.mul(x, g.const_f32(1.702f))}));
  if (name == "relu") return g.relu(x);
  if (name == "silu" || name == "swish") return g.mul(x, g.op("Sigmoid", {x}));
  if (name == "tanh") return g.tanh(x);
  throw InputError(config_file, "unsupported activation '" + name +
                                    "' (supported: gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, quick_gelu, relu, "
                                    "silu, swish, tanh)");
}

Value self_attention(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias, const AttentionNames& names,
                     const AttentionOptions& opt) {
  const int64_t h = opt.hidden, nh = opt.num_heads, hd = opt.hidden / opt.num_heads;
  // [B, S, H] → [B, nh, S, hd]
  auto heads = [&](const std::string& lin_name, const char* scope_name) {
    auto s = g.scope(scope_name);
    Value y = linear(g, w, x, lin_name, h, h);
    return g.transpose(g.reshape(y, {0, 0, nh, hd}), {0, 2, 1, 3});
  };
  Value q = heads(names.query, "query");
  Value k = heads(names.key, "key");
  Value v = heads(names.value, "value");
  AttentionSpec spec;
  spec.num_heads = spec.num_kv_heads = nh;
  spec.head_dim = hd;
  spec.scaling = opt.scale_query_first ? ScoreScaling::kDivideQuery : ScoreScaling::kDivideScores;
  blocks::AttentionInputs in;
  in.mask_bias = mask_bias;
  return blocks::attention_core(g, q, k, v, spec, in).context;
}

namespace {
// ORT's SkipLayerNormalization: LayerNorm(input + skip + bias).
Value skip_layer_norm(GraphBuilder& g, Weights& w, const Value& input, const Value& skip, const std::string& bias_name,
                      const std::string& ln_name, int64_t dim, float eps) {
  return g.node("SkipLayerNormalization",
                {input, skip, w.get(ln_name + ".weight", {dim}), w.get(ln_name + ".bias", {dim}), w.get(bias_name, {dim})},
                {GraphBuilder::Attr::Float("epsilon", eps)}, 1, GraphBuilder::kMsDomain)[0];
}
}  // namespace

Value attention_block(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias,
                      const AttentionBlockNames& names, const AttentionOptions& opt, float eps) {
  auto s = g.scope("attention");
  const int64_t h = opt.hidden;
  if (g.fused()) {
    auto [qkv_w, qkv_b] = w.get_packed_qkv(names.query, names.key, names.value, h);
    Value ctx = g.node("Attention", {x, qkv_w, qkv_b, mask_bias},
                       {GraphBuilder::Attr::Int("num_heads", opt.num_heads),
                        GraphBuilder::Attr::Float("mask_filter_value", std::numeric_limits<float>::lowest())},
                       1, GraphBuilder::kMsDomain)[0];
    Value proj = g.matmul(ctx, w.get_transposed(names.output + ".weight", {h, h}));
    return skip_layer_norm(g, w, proj, x, names.output + ".bias", names.layer_norm, h, eps);
  }
  Value ctx = self_attention(g, w, x, mask_bias, {names.query, names.key, names.value}, opt);
  Value proj = linear(g, w, ctx, names.output, h, h);
  return layer_norm(g, w, g.add(proj, x), names.layer_norm, h, eps);
}

Value encoder_block(GraphBuilder& g, Weights& w, const Value& x, const Value& mask_bias, const BlockSpec& spec,
                    const LayerNames& n, const std::string& config_file) {
  const AttentionOptions opt{spec.hidden, spec.attention.num_heads,
                             spec.attention.scaling == ScoreScaling::kDivideQuery};
  Value y = attention_block(g, w, x, mask_bias, {n.q, n.k, n.v, n.o, n.attn_norm}, opt, spec.eps);
  return feed_forward_block(g, w, y, {n.up, n.down, n.mlp_norm}, spec.hidden, spec.intermediate, spec.activation,
                            spec.eps, config_file);
}

Value feed_forward_block(GraphBuilder& g, Weights& w, const Value& x, const FeedForwardNames& names, int64_t hidden,
                         int64_t inner, const std::string& act, float eps, const std::string& config_file) {
  auto s = g.scope("ffn");
  if (g.fused()) {
    Value up = g.matmul(x, w.get_transposed(names.up + ".weight", {inner, hidden}));
    Value up_bias = w.get(names.up + ".bias", {inner});
    Value h;
    if (act == "gelu" && !g.gelu_approximation()) {
      h = g.node("BiasGelu", {up, up_bias}, {}, 1, GraphBuilder::kMsDomain)[0];
    } else if (act == "gelu" || act == "gelu_new" || act == "gelu_pytorch_tanh" || act == "gelu_fast") {
      // FastGelu is exactly gelu_new's tanh formula; for exact "gelu" only when approximation was asked for.
      h = g.node("FastGelu", {up, up_bias}, {}, 1, GraphBuilder::kMsDomain)[0];
    } else {
      h = activation(g, g.add(up, up_bias), act, config_file);
    }
    Value down = g.matmul(h, w.get_transposed(names.down + ".weight", {hidden, inner}));
    return skip_layer_norm(g, w, down, x, names.down + ".bias", names.layer_norm, hidden, eps);
  }
  Value h = activation(g, linear(g, w, x, names.up, hidden, inner), act, config_file);
  Value out = linear(g, w, h, names.down, inner, hidden);
  return layer_norm(g, w, g.add(out, x), names.layer_norm, hidden, eps);
}

Value tied_decoder(GraphBuilder& g, Weights& w, const Value& x, const std::string& name, const std::string& fallback,
                   int64_t vocab, int64_t dim) {
  const std::string& source = w.has(name) ? name : fallback;
  if (g.fused()) return g.matmul(x, w.get_transposed(source, {vocab, dim}));
  return g.matmul(x, g.transpose(w.get(source, {vocab, dim}), {1, 0}));
}

Value first_token(GraphBuilder& g, const Value& x) { return g.gather(x, g.const_i64({0}, /*scalar=*/true), 1); }

Value embedding(GraphBuilder& g, Weights& w, const Value& ids, const std::string& name, int64_t rows, int64_t dim) {
  return g.gather(w.get(name, {rows, dim}), ids, 0);
}

Value leading_positions(GraphBuilder& g, Weights& w, const Value& input_ids, const std::string& name, int64_t rows,
                        int64_t dim) {
  auto s = g.scope("positions");
  Value seq_len = g.slice(g.shape(input_ids), g.const_i64({1}), g.const_i64({2}), g.const_i64({0}));
  return g.slice(w.get(name, {rows, dim}), g.const_i64({0}), seq_len, g.const_i64({0}));
}

}  // namespace trex::layers

namespace trex::layers {

std::vector<GraphOutput> heads(BuildContext& ctx, Weights& w, const Value& x, const HeadSpec& h) {
  auto& g = ctx.graph;
  const std::string& cfg = ctx.config.file();
  auto pooled = [&]() {
    auto s = g.scope("pooler");
    return g.tanh(linear(g, w, first_token(g, x), h.pooler, h.hidden, h.hidden));
  };
  switch (ctx.task) {
    case Task::kFeatureExtraction: {
      std::vector<GraphOutput> outs{{"last_hidden_state", x, {ctx.batch, ctx.seq, h.hidden}}};
      if (!h.pooler.empty() && w.has(h.pooler + ".weight"))
        outs.push_back({"pooler_output", pooled(), {ctx.batch, h.hidden}});
      return outs;
    }
    case Task::kSequenceClassification: {
      const int64_t labels = ctx.config.num_labels();
      Value features = h.classifier_dense.empty() ? pooled() : first_token(g, x);
      auto s = g.scope("classifier");
      if (!h.classifier_dense.empty())
        features = activation(g, linear(g, w, features, h.classifier_dense, h.hidden, h.hidden), h.classifier_act, cfg);
      return {{"logits", linear(g, w, features, h.classifier_out, h.hidden, labels), {ctx.batch, labels}}};
    }
    case Task::kTokenClassification: {
      auto s = g.scope("classifier");
      const int64_t labels = ctx.config.num_labels();
      return {{"logits", linear(g, w, x, "classifier", h.hidden, labels), {ctx.batch, ctx.seq, labels}}};
    }
    case Task::kQuestionAnswering: {
      auto s = g.scope("qa_outputs");
      Value logits = linear(g, w, x, "qa_outputs", h.hidden, 2);  // [B, S, 2]
      return {{"start_logits", g.gather(logits, g.const_i64({0}, true), 2), {ctx.batch, ctx.seq}},
              {"end_logits", g.gather(logits, g.const_i64({1}, true), 2), {ctx.batch, ctx.seq}}};
    }
    case Task::kMaskedLM: {
      auto s = g.scope("mlm_head");
      Value t = activation(g, linear(g, w, x, h.mlm_dense, h.hidden, h.mlm_dim), h.mlm_act, cfg);
      t = layer_norm(g, w, t, h.mlm_layer_norm, h.mlm_dim, h.eps);
      Value dec = tied_decoder(g, w, t, h.mlm_decoder, h.word_embeddings, h.vocab, h.mlm_dim);
      Value bias = h.mlm_bias_fallback.empty() ? w.get(h.mlm_bias, {h.vocab})
                                               : w.get_or(h.mlm_bias, h.mlm_bias_fallback, {h.vocab});
      return {{"logits", g.add(dec, bias), {ctx.batch, ctx.seq, h.vocab}}};
    }
    case Task::kCausalLM:
    case Task::kSeq2SeqLM:
      break;  // generative models are built by blocks::build_decoder / build_seq2seq
  }
  return {};
}

}  // namespace trex::layers
