// Placeholder until the encoder pipelines land: names what is missing instead of failing at link time.
#include "pipelines/pipeline.h"
#include "util/error.h"

namespace trex::pipelines {

std::unique_ptr<Pipeline> make_encoder_pipeline(const std::filesystem::path&, const std::string& task, const RunOptions&) {
  throw UsageError("trex run: the " + task + " pipeline is not available in this build yet");
}

}  // namespace trex::pipelines
