// The generation loop over ONNX Runtime for folders trex exported: decoder-only LMs (model.onnx with input_ids,
// attention_mask, position_ids, past_key_values.{i}.key|value -> logits, present.*) and encoder-decoders
// (encoder_model.onnx + decoder_model_merged.onnx with use_cache_branch). Each step feeds the previous step's
// present.* Ort::Values back as past_key_values.* (moved, not copied); beam search gathers cache rows only when
// beams are reordered. Strategies follow transformers' generate(): greedy, sampling (temperature, top-k, top-p,
// seeded), repetition penalty, min_length, forced BOS/EOS, single-token bad words, max_new_tokens / max_length,
// no_repeat_ngram_size, stop at eos (one id or several), beam search with length penalty and early stopping (true, false, "never").
//   auto model = trex::generation::load_model("out/gpt2", /*threads=*/0);
//   auto cfg = trex::generation::GenerationConfig::from_folder("out/gpt2");
//   cfg.max_new_tokens = 20;
//   auto out = model->generate({{5, 6, 7}, {8, 9}}, cfg);   // generated ids per prompt (eos included when hit)
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace trex::generation {

struct GenerationConfig {
  int64_t max_new_tokens = -1;  // -1: from max_length
  int64_t max_length = 20;      // prompt + new tokens (decoder-only); decoder tokens incl. the start token (seq2seq)
  int64_t min_length = 0;
  int64_t min_new_tokens = 0;   // eos suppressed until this many new tokens
  bool do_sample = false;
  float temperature = 1.0f;
  int top_k = 50;  // 0: off
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  int no_repeat_ngram_size = 0;  // 0: off
  int num_beams = 1;
  float length_penalty = 1.0f;
  enum class EarlyStopping { kFalse, kTrue, kNever } early_stopping = EarlyStopping::kFalse;
  std::vector<int64_t> eos_token_ids;
  int64_t pad_token_id = -1;
  int64_t decoder_start_token_id = -1;
  int64_t forced_bos_token_id = -1;
  int64_t forced_eos_token_id = -1;
  std::vector<int64_t> bad_token_ids;  // bad_words_ids entries of one token
  uint64_t seed = 0;

  // generation_config.json of `folder` when present (else config.json's generation keys), as transformers
  // reads them; unknown keys are ignored, mistyped known ones are an InputError naming the file.
  static GenerationConfig from_folder(const std::filesystem::path& folder);
  // Applies one JSON object's generation keys (generation_config.json, task_specific_params entries).
  void update(const nlohmann::json& j, const std::string& file);
};

// Timings of the last generate() call: the first step (prefill, the encoder included) and the decode steps after
// the first token, from the first token chosen to the last (as onnxruntime-genai's figures are taken here).
struct GenerationStats {
  double prefill_s = 0, decode_s = 0;
  int64_t decode_steps = 0, rows = 0;
};

// Called after each step with the row (prompt index) and all the ids it generated so far.
using OnTokens = std::function<void(size_t row, const std::vector<int64_t>& generated)>;

class Generator {
 public:
  virtual ~Generator() = default;
  // Token ids of the continuation of each prompt (decoder-only) / the output of each source text
  // (encoder-decoder, the decoder start token left out), eos included when generation stopped on it.
  virtual std::vector<std::vector<int64_t>> generate(const std::vector<std::vector<int64_t>>& prompts,
                                                     const GenerationConfig& config, const OnTokens& on_tokens = {}) = 0;
  virtual bool encoder_decoder() const = 0;
  virtual const GenerationStats& stats() const = 0;
};

// model.onnx (decoder-only) or encoder_model.onnx + decoder_model_merged.onnx (encoder-decoder) in `folder`.
std::unique_ptr<Generator> load_generator(const std::filesystem::path& folder, int threads);

}  // namespace trex::generation
