// The one-header C++ API (src/trex.h) over the export job and the pipelines.
#include "trex.h"

#include "export/export.h"
#include "pipelines/pipeline.h"

namespace trex {

std::filesystem::path export_checkpoint(const std::filesystem::path& checkpoint, const std::filesystem::path& out_dir,
                                        const ExportSettings& s) {
  ExportOptions o;
  o.model_dir = checkpoint;
  o.output = out_dir;
  o.write_companions = true;
  o.pipeline = s.pipeline;
  o.opset = s.opset;
  o.optimize = s.optimize;
  o.quantize = s.quantize;
  o.check = s.check;
  check_export_paths(o);
  return export_onnx(o).written.model_path;
}

TextPipeline::TextPipeline(std::unique_ptr<pipelines::Pipeline> p) : p_(std::move(p)) {}
TextPipeline::TextPipeline(TextPipeline&&) noexcept = default;
TextPipeline& TextPipeline::operator=(TextPipeline&&) noexcept = default;
TextPipeline::~TextPipeline() = default;

TextPipeline TextPipeline::open(const std::filesystem::path& folder, const PipelineSettings& s) {
  pipelines::RunOptions o;
  o.task = s.task;
  o.threads = s.threads;
  o.batch_size = s.batch_size;
  o.top_k = s.top_k;
  o.function_to_apply = s.function_to_apply;
  o.aggregation_strategy = s.aggregation_strategy;
  o.context = s.context;
  o.max_answer_len = s.max_answer_len;
  o.max_new_tokens = s.max_new_tokens;
  o.do_sample = s.do_sample;
  o.temperature = s.temperature;
  o.top_p = s.top_p;
  o.num_beams = s.num_beams;
  o.seed = s.seed;
  o.on_text = s.on_text;
  return TextPipeline(pipelines::make_pipeline(folder, o));
}

const std::string& TextPipeline::task() const { return p_->task(); }

std::vector<std::string> TextPipeline::run(const std::vector<std::string>& inputs) {
  std::vector<std::string> out;
  for (const auto& a : p_->run(inputs)) out.push_back(a.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  return out;
}

}  // namespace trex
