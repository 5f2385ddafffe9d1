// trex as a library: the one header an application includes to export a Hugging Face checkpoint to ONNX, open
// the folder trex wrote as a pipeline, and turn text into the answers transformers' pipeline() gives — in C++,
// without Python. Link the `trex_lib` CMake target (it brings ONNX Runtime, ICU, protobuf); no ONNX protobuf or
// ONNX Runtime type appears here.
//
//   #include "trex.h"
//   trex::export_checkpoint("checkpoints/minilm", "out/minilm");           // model.onnx + config + tokenizer
//   trex::TextPipeline p = trex::TextPipeline::open("out/minilm");          // the pipeline it was exported for
//   for (const std::string& answer : p.run({"A sentence.", "Another one."}))
//     std::cout << answer << "\n";                                          // JSON, transformers' keys
//   trex::TextPipeline qa = trex::TextPipeline::open("out/squad", {.task = "question-answering",
//                                                                  .context = "Marie Curie was born in Warsaw."});
//   auto ids = trex::Tokenizer::load("out/minilm").encode("Hello world").ids;  // tokenize
//
// Answers are JSON text, one per input, with the keys transformers uses for the task: a vector (feature-extraction
// with sentence-transformers pooling) or [1][tokens][hidden] floats; {"label","score"} (text-classification; a
// list with top_k); [{"entity"|"entity_group","score","word","start","end",...}] (token-classification);
// {"answer","score","start","end"} (question-answering); [{"score","token","token_str","sequence"}] (fill-mask);
// [{"generated_text"}] / [{"translation_text"}] / [{"summary_text"}] (generation). start/end count characters.
// Errors are trex::Error (util/error.h): InputError for a bad folder or input, UsageError for options that do not
// fit, OutputError when the output cannot be written; what() is one line naming the file and the problem.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/tokenizer.h"  // trex::tokenizers::Tokenizer: encode (ids, offsets), decode
#include "util/error.h"            // trex::Error and its kinds

namespace trex {

namespace pipelines {
class Pipeline;
}

using Tokenizer = tokenizers::Tokenizer;

struct ExportSettings {
  std::string pipeline;   // head to export (feature-extraction, text-classification, ...); empty: the checkpoint's
  int opset = 17;
  bool optimize = false;  // also write model-optimized.onnx (ONNX Runtime's fused operators, verified)
  bool quantize = false;  // also write model-quantized.onnx (int8, compared with the float model)
  bool check = true;      // load and run the written model once in ONNX Runtime
};

// Exports the checkpoint folder (config.json + safetensors/.bin weights, tokenizer files) into `out_dir`: the model
// file(s), config.json, the tokenizer files and the other companions a pipeline needs. Returns the main model file.
std::filesystem::path export_checkpoint(const std::filesystem::path& checkpoint, const std::filesystem::path& out_dir,
                                        const ExportSettings& settings = {});

struct PipelineSettings {
  std::string task;      // transformers' pipeline name; empty: the one the folder was exported for
  int threads = 0;       // ONNX Runtime intra-op threads; 0: its default
  int batch_size = 32;   // inputs run together (length-sorted)
  int top_k = -1;        // answers per input; -1: the pipeline's default
  std::string function_to_apply;             // text-classification: softmax, sigmoid, none; empty: the config's
  std::string aggregation_strategy = "none";  // token-classification: none, simple, first, average, max
  std::string context;                       // question-answering: the text the questions are about
  int max_answer_len = 15;                   // question-answering
  int max_new_tokens = -1;                   // generation; -1: generation_config.json's
  bool do_sample = false;
  float temperature = 1.0f;
  float top_p = 1.0f;
  int num_beams = 1;
  uint64_t seed = 0;
  // Generation: called with each piece of text as it is decoded (input index, text).
  std::function<void(size_t input, std::string_view piece)> on_text;
};

class TextPipeline {
 public:
  static TextPipeline open(const std::filesystem::path& folder, const PipelineSettings& settings = {});
  TextPipeline(TextPipeline&&) noexcept;
  TextPipeline& operator=(TextPipeline&&) noexcept;
  ~TextPipeline();

  const std::string& task() const;
  // One JSON answer per input, in input order.
  std::vector<std::string> run(const std::vector<std::string>& inputs);

 private:
  explicit TextPipeline(std::unique_ptr<pipelines::Pipeline> p);
  std::unique_ptr<pipelines::Pipeline> p_;
};

}  // namespace trex
