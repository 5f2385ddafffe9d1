#include "pipelines/pipeline.h"

#include "arch/architecture.h"
#include "onnx/reader.h"
#include "util/error.h"

namespace trex::pipelines {

namespace fs = std::filesystem;

namespace {

// The model file whose metadata names the pipeline: model.onnx for encoders and decoder-only LMs written as
// one graph, decoder_model_merged.onnx / encoder_model.onnx for sets of graphs.
fs::path main_model_file(const fs::path& folder) {
  if (!fs::is_directory(folder)) throw InputError(folder.string(), "not a folder (trex run takes the folder trex export wrote)");
  for (const char* name : {"model.onnx", "decoder_model_merged.onnx", "encoder_model.onnx"})
    if (fs::is_regular_file(folder / name)) return folder / name;
  throw InputError(folder.string(), "no model.onnx, decoder_model_merged.onnx or encoder_model.onnx in the folder");
}

}  // namespace

std::string folder_task(const fs::path& folder) {
  const fs::path file = main_model_file(folder);
  const Model m = read_model(file);
  for (const auto& p : m.proto.metadata_props())
    if (p.key() == "pipeline") return p.value();
  throw InputError(file.string(), "no `pipeline` metadata (not written by trex export?); pass --pipeline");
}

std::unique_ptr<Pipeline> make_pipeline(const fs::path& folder, const RunOptions& options) {
  const std::string name = options.task.empty() ? folder_task(folder) : options.task;
  // translation_xx_to_yy for any pair of languages, as transformers accepts it.
  const std::optional<Task> task = name.rfind("translation_", 0) == 0 ? Task::kSeq2SeqLM : parse_task(name);
  if (!task) throw UsageError("unknown pipeline '" + name + "' (known: " + known_task_names() + ")");
  switch (*task) {
    case Task::kCausalLM:
    case Task::kSeq2SeqLM:
      return make_generation_pipeline(folder, name, options);
    default:
      return make_encoder_pipeline(folder, name, options);
  }
}

}  // namespace trex::pipelines
