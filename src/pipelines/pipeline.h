// `trex run`'s engine: text in, the answer transformers' pipeline() gives out, from a folder trex exported
// (model .onnx file(s) + config.json + tokenizer files), with no Python.
//   trex::pipelines::RunOptions o;                       // o.task empty: the pipeline the folder was exported for
//   auto p = trex::pipelines::make_pipeline("out/minilm", o);
//   for (const auto& answer : p->run({"A sentence.", "Another one."})) std::cout << answer.dump() << "\n";
// Each answer is JSON with the keys transformers' pipeline uses for that task (label/score, entity_group/word/
// start/end, answer, token_str/sequence, generated_text, translation_text, ...). Errors are trex::Error
// subclasses (UsageError for options that do not fit the pipeline, InputError for a bad folder or input).
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace trex::pipelines {

struct RunOptions {
  // Pipeline name as transformers spells it (feature-extraction, text-classification, token-classification,
  // question-answering, fill-mask, text-generation, translation, summarization, text2text-generation and the
  // aliases parse_task accepts). Empty: the `pipeline` metadata of the folder's model.
  std::string task;
  int threads = 0;       // ONNX Runtime intra-op threads; 0: its default
  int batch_size = 32;   // inputs run together (length-sorted where the pipeline allows)
  // Encoder pipelines: the ONNX file of the folder to run (a file name in it, e.g. model-quantized.onnx or
  // model-optimized.onnx, which trex export writes with --quantize / --optimize); empty: model.onnx.
  std::string model_file;

  // text-classification, token-classification, fill-mask, question-answering
  int top_k = -1;                     // -1: the pipeline's default (1 for classification, 5 for fill-mask)
  std::string function_to_apply;      // text-classification: "", "softmax", "sigmoid", "none"
  std::string aggregation_strategy = "none";  // token-classification: none, simple, first, average, max
  std::string context;                // question-answering: the context every question is asked about
  int max_answer_len = 15;            // question-answering
  int max_seq_len = 384;              // question-answering: window length over long contexts
  int doc_stride = 128;               // question-answering: overlap of the windows

  // text-generation, translation, summarization, text2text-generation
  int max_new_tokens = -1;            // -1: generation_config.json's / the pipeline's default
  bool do_sample = false;
  float temperature = 1.0f;
  int sample_top_k = 50;
  float top_p = 1.0f;
  float repetition_penalty = 1.0f;
  int num_beams = 0;                  // 0: generation_config.json's (seq2seq pipelines: 4 unless it says)
  float length_penalty = 1.0f;
  uint64_t seed = 0;
  bool return_full_text = true;       // text-generation: prompt + continuation, as transformers does
  int min_new_tokens = 0;             // eos suppressed until this many new tokens (transformers' min_new_tokens)
  bool timing = false;
  int no_repeat_ngram_size = -1;      // -1: generation_config.json's; 0: off                // print each generate() call's timings as a JSON line on stderr
  // Called with each new piece of generated text as it is decoded (streaming); input index first.
  std::function<void(size_t input, std::string_view piece)> on_text;
};

class Pipeline {
 public:
  virtual ~Pipeline() = default;
  virtual const std::string& task() const = 0;
  // One answer per input, in input order.
  virtual std::vector<nlohmann::json> run(const std::vector<std::string>& inputs) = 0;
  // How many inputs a caller streaming many (stdin lines) should pass to one run(): the encoder pipelines sort
  // what they get by length, so they take many batches' worth at a time.
  virtual size_t inputs_per_call(size_t batch_size) const { return batch_size; }
};

// The pipeline named by options.task (or the folder's metadata) over the folder's model(s).
std::unique_ptr<Pipeline> make_pipeline(const std::filesystem::path& folder, const RunOptions& options);

// The pipeline recorded in the folder's model metadata ("pipeline" key), e.g. "text-classification".
std::string folder_task(const std::filesystem::path& folder);

// Implemented per group of pipelines (src/pipelines/*.cc); make_pipeline dispatches to them.
std::unique_ptr<Pipeline> make_encoder_pipeline(const std::filesystem::path& folder, const std::string& task,
                                                const RunOptions& options);
std::unique_ptr<Pipeline> make_generation_pipeline(const std::filesystem::path& folder, const std::string& task,
                                                   const RunOptions& options);

}  // namespace trex::pipelines
