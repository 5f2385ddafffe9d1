// Exports a checkpoint folder to ONNX with the trex library (as `trex export CHECKPOINT OUTPUT --layout optimum`
// would), then prints what it wrote and what ONNX Runtime's load check ran.
#include <cstdio>
#include <exception>

#include "export/export.h"
#include "io/config.h"
#include "io/weight_store.h"
#include "util/error.h"

int main(int argc, char** argv) {
  if (argc != 3) {
    std::fprintf(stderr, "usage: %s CHECKPOINT_FOLDER OUTPUT_FOLDER\n", argv[0]);
    return 1;
  }
  try {
    const trex::ModelConfig config = trex::ModelConfig::load(std::filesystem::path(argv[1]) / "config.json");
    const trex::WeightStore weights = trex::WeightStore::open_dir(argv[1]);
    std::printf("checkpoint: model_type %s, %zu tensors, %zu bytes\n", config.model_type.c_str(), weights.size(),
                weights.total_bytes());

    trex::ExportOptions options;
    options.model_dir = argv[1];
    options.output = argv[2];
    options.layout = trex::Layout::kOptimum;
    const trex::ExportResult result = trex::export_onnx(options);
    for (const auto& graph : result.graphs) {
      std::printf("wrote %s (%zu bytes)\n", graph.written.model_path.c_str(), graph.written.model_bytes);
      if (graph.check) std::printf("load check: %s\n", graph.check->summary().c_str());
    }
    for (const auto& file : result.companions) std::printf("wrote %s\n", file.c_str());
    return 0;
  } catch (const trex::Error& e) {
    std::fprintf(stderr, "trex_consumer: error: %s\n", e.what());
    return static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "trex_consumer: internal error: %s\n", e.what());
    return 5;
  }
}
