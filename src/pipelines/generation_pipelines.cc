// text-generation, translation / translation_xx_to_yy, summarization and text2text-generation over the
// generation loop (src/generation/), with transformers' pipeline() pre- and post-processing:
//  - text-generation: the prompt tokenized with the tokenizer's special tokens; `generated_text` is the prompt
//    followed by decode(prompt + new ids)[len(decode(prompt ids)):] with clean_up_tokenization_spaces, as
//    return_full_text=True gives (only the new text with return_full_text=false).
//  - seq2seq pipelines: config.json's task_specific_params prefix / generation keys for the task, the source
//    tokenized with special tokens, the output decoded without special tokens (no clean-up).
// Defaults: generation_config.json, then what the command line sets; max_new_tokens is 256 unless the model
// sets max_length (the pipelines' default), seq2seq pipelines use 4 beams unless the model or the command line
// says otherwise. Sampling happens only with --do-sample (transformers' text-generation pipeline samples by
// default, and so do configs whose task_specific_params say do_sample; trex stays deterministic unless asked).
#include <algorithm>
#include <cstdio>
#include <string>

#include "generation/generate.h"
#include "io/json_file.h"
#include "pipelines/pipeline.h"
#include "tokenizers/tokenizer.h"
#include "util/error.h"

namespace trex::pipelines {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

// transformers' clean_up_tokenization.
std::string clean_up(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."}, {" ?", "?"}, {" !", "!"}, {" ,", ","}, {" ' ", "'"}, {" n't", "n't"},
      {" 'm", "'m"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [from, to] : kRules) {
    const std::string f = from, t = to;
    std::string out;
    size_t pos = 0;
    for (;;) {
      const size_t hit = s.find(f, pos);
      if (hit == std::string::npos) break;
      out.append(s, pos, hit - pos);
      out += t;
      pos = hit + f.size();
    }
    out.append(s, pos, std::string::npos);
    s = std::move(out);
  }
  return s;
}

size_t utf8_chars(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}
// Byte offset of the `chars`-th code point (s.size() when past the end).
size_t utf8_offset(const std::string& s, size_t chars) {
  size_t n = 0;
  for (size_t i = 0; i < s.size(); ++i) {
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) {
      if (n == chars) return i;
      ++n;
    }
  }
  return s.size();
}

// Streams the growing text of one answer: emits the new suffix of each decode, holding back the last few
// characters (a clean-up rule or an incomplete UTF-8 sequence may still change them).
class TextStream {
 public:
  TextStream(const std::function<void(size_t, std::string_view)>* sink, size_t input) : sink_(sink), input_(input) {}
  void update(const std::string& text, bool final) {
    if (!sink_ || !*sink_) return;
    size_t stable = text.size();
    if (!final) {
      // Hold back the last 4 code points and a trailing replacement character.
      size_t back = 0;
      while (stable > 0 && back < 4) {
        --stable;
        while (stable > 0 && (static_cast<unsigned char>(text[stable]) & 0xC0) == 0x80) --stable;
        ++back;
      }
    }
    if (stable <= emitted_.size()) return;
    if (text.compare(0, emitted_.size(), emitted_) != 0) return;  // changed under us: wait for the final text
    (*sink_)(input_, std::string_view(text).substr(emitted_.size(), stable - emitted_.size()));
    emitted_.assign(text, 0, stable);
  }

 private:
  const std::function<void(size_t, std::string_view)>* sink_;
  size_t input_;
  std::string emitted_;
};

enum class Kind { kTextGeneration, kTranslation, kSummarization, kText2Text };

class GenerationPipeline : public Pipeline {
 public:
  GenerationPipeline(const fs::path& folder, const std::string& task, const RunOptions& o)
      : task_(task), options_(o), tokenizer_(tokenizers::Tokenizer::load(folder)) {
    generator_ = generation::load_generator(folder, o.threads);
    const bool enc_dec = generator_->encoder_decoder();
    if (task == "text-generation") kind_ = Kind::kTextGeneration;
    else if (task == "summarization") kind_ = Kind::kSummarization;
    else if (task == "translation" || task.rfind("translation_", 0) == 0) kind_ = Kind::kTranslation;
    else kind_ = Kind::kText2Text;
    if ((kind_ == Kind::kTextGeneration) == enc_dec)
      throw UsageError("the " + task + " pipeline needs " +
                       (enc_dec ? std::string("a decoder-only model (this folder holds an encoder-decoder)")
                                : std::string("an encoder-decoder (this folder holds a decoder-only model)")));
    config_ = generation::GenerationConfig::from_folder(folder);
    // The pipeline's defaults under the model's: max_new_tokens 256 unless the model sets max_length.
    const bool model_sets_length = config_.max_new_tokens < 0 && config_.max_length != 20;
    if (config_.max_new_tokens < 0 && !model_sets_length) config_.max_new_tokens = 256;
    if (enc_dec && config_.num_beams == 1) config_.num_beams = 4;
    // config.json's task_specific_params for this task (prefix, lengths, beams).
    const fs::path cfg = folder / "config.json";
    if (fs::exists(cfg)) {
      const json c = read_json_file(cfg);
      if (c.contains("task_specific_params") && c["task_specific_params"].is_object() &&
          c["task_specific_params"].contains(task) && c["task_specific_params"][task].is_object()) {
        json p = c["task_specific_params"][task];
        if (p.contains("prefix")) {
          if (!p["prefix"].is_string()) throw InputError(cfg.string(), "task_specific_params prefix must be a string");
          prefix_ = p["prefix"].get<std::string>();
          p.erase("prefix");
        }
        config_.update(p, cfg.string());
      } else if (c.contains("prefix") && c["prefix"].is_string()) {
        prefix_ = c["prefix"].get<std::string>();
      }
    }
    if (config_.pad_token_id < 0)
      if (auto id = tokenizer_.token_to_id("<pad>")) config_.pad_token_id = *id;
    // The command line over both.
    if (o.max_new_tokens == 0 || o.max_new_tokens < -1) throw UsageError("--max-new-tokens must be at least 1");
    if (o.max_new_tokens > 0) config_.max_new_tokens = o.max_new_tokens;
    config_.do_sample = o.do_sample;
    // Values left at generate()'s defaults fall back to the model's, as transformers merges a passed config.
    if (o.temperature != 1.0f) config_.temperature = o.temperature;
    if (o.sample_top_k != 50) config_.top_k = o.sample_top_k;
    if (o.top_p != 1.0f) config_.top_p = o.top_p;
    if (o.repetition_penalty != 1.0f) config_.repetition_penalty = o.repetition_penalty;
    if (o.num_beams > 0) config_.num_beams = o.num_beams;
    if (o.length_penalty != 1.0f) config_.length_penalty = o.length_penalty;
    config_.seed = o.seed;
    if (o.min_new_tokens > 0) config_.min_new_tokens = o.min_new_tokens;
    if (o.no_repeat_ngram_size >= 0) config_.no_repeat_ngram_size = o.no_repeat_ngram_size;
  }

  const std::string& task() const override { return task_; }

  std::vector<json> run(const std::vector<std::string>& inputs) override {
    std::vector<json> answers;
    if (options_.on_text) {  // streamed: one input at a time, so the pieces of each answer come in order
      for (size_t i = 0; i < inputs.size(); ++i) {
        auto a = run_batch({inputs[i]}, i);
        answers.push_back(std::move(a[0]));
      }
      return answers;
    }
    return run_batch(inputs, 0);
  }

 private:
  std::vector<json> run_batch(const std::vector<std::string>& inputs, size_t first_index) {
    std::vector<std::vector<int64_t>> prompts;
    for (const auto& text : inputs) prompts.push_back(tokenizer_.encode(prefix_ + text, true).ids);
    const bool stream = static_cast<bool>(options_.on_text);
    std::vector<TextStream> streams;
    for (size_t i = 0; i < inputs.size(); ++i) streams.emplace_back(stream ? &options_.on_text : nullptr, first_index + i);
    std::vector<std::string> prompt_text(inputs.size());
    std::vector<size_t> prompt_chars(inputs.size());
    if (kind_ == Kind::kTextGeneration)
      for (size_t i = 0; i < inputs.size(); ++i) prompt_chars[i] = utf8_chars(clean_up(tokenizer_.decode(prompts[i], true)));
    auto text_of = [&](size_t i, const std::vector<int64_t>& generated) {
      if (kind_ != Kind::kTextGeneration) return tokenizer_.decode(generated, true);
      std::vector<int64_t> all = prompts[i];
      all.insert(all.end(), generated.begin(), generated.end());
      const std::string full = clean_up(tokenizer_.decode(all, true));
      const std::string added = full.substr(utf8_offset(full, prompt_chars[i]));
      return options_.return_full_text ? inputs[i] + added : added;
    };
    generation::OnTokens on_tokens;
    if (stream)
      on_tokens = [&](size_t row, const std::vector<int64_t>& generated) {
        streams[row].update(text_of(row, generated), false);
      };
    const auto outputs = generator_->generate(prompts, config_, on_tokens);
    if (options_.timing) {
      const auto& st = generator_->stats();
      size_t prompt_tokens = 0, new_tokens = 0;
      for (const auto& p : prompts) prompt_tokens += p.size();
      for (const auto& o : outputs) new_tokens += o.size();
      const json t{{"prompt_tokens", prompt_tokens}, {"new_tokens", new_tokens}, {"prefill_s", st.prefill_s},
                   {"decode_steps", st.decode_steps}, {"decode_s", st.decode_s},
                   {"decode_tok_s", st.decode_s > 0 ? json(double(st.decode_steps * st.rows) / st.decode_s) : json()}};
      std::fprintf(stderr, "%s\n", t.dump().c_str());
    }
    std::vector<json> answers;
    const char* key = kind_ == Kind::kTextGeneration ? "generated_text"
                      : kind_ == Kind::kTranslation  ? "translation_text"
                      : kind_ == Kind::kSummarization ? "summary_text"
                                                      : "generated_text";
    for (size_t i = 0; i < outputs.size(); ++i) {
      const std::string text = text_of(i, outputs[i]);
      streams[i].update(text, true);
      answers.push_back(json::array({json{{key, text}}}));
    }
    return answers;
  }

  std::string task_;
  RunOptions options_;
  tokenizers::Tokenizer tokenizer_;
  std::unique_ptr<generation::Generator> generator_;
  generation::GenerationConfig config_;
  Kind kind_ = Kind::kText2Text;
  std::string prefix_;
};

}  // namespace

std::unique_ptr<Pipeline> make_generation_pipeline(const fs::path& folder, const std::string& task,
                                                   const RunOptions& options) {
  return std::make_unique<GenerationPipeline>(folder, task, options);
}

}  // namespace trex::pipelines
