// Example of the one-header C++ API (src/trex.h): run a pipeline on text from a folder trex exported.
//   trex_example_pipeline FOLDER [--export CHECKPOINT] [--pipeline P] [--context TEXT] [--top-k K] TEXT...
// --export first exports CHECKPOINT into FOLDER. Prints one JSON answer per TEXT (transformers' keys).
#include <cstdlib>
#include <iostream>
#include <string>
#include <vector>

#include "trex.h"

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " FOLDER [--export CHECKPOINT] [--pipeline P] [--context TEXT] [--top-k K] TEXT...\n";
    return 1;
  }
  const std::string folder = argv[1];
  std::string checkpoint;
  trex::PipelineSettings settings;
  std::vector<std::string> texts;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--export" && has_value) checkpoint = argv[++i];
    else if (a == "--pipeline" && has_value) settings.task = argv[++i];
    else if (a == "--context" && has_value) settings.context = argv[++i];
    else if (a == "--top-k" && has_value) settings.top_k = std::atoi(argv[++i]);
    else texts.push_back(a);
  }
  try {
    if (!checkpoint.empty()) {
      trex::ExportSettings es;
      es.pipeline = settings.task;
      std::cerr << "exported " << trex::export_checkpoint(checkpoint, folder, es).string() << "\n";
    }
    trex::TextPipeline pipeline = trex::TextPipeline::open(folder, settings);
    for (const std::string& answer : pipeline.run(texts)) std::cout << answer << "\n";
    // The tokenizer alone: the ids of the first text.
    const trex::Tokenizer tok = trex::Tokenizer::load(folder);
    if (!texts.empty()) std::cerr << "ids of the first text: " << tok.encode(texts[0]).ids.size() << " tokens\n";
  } catch (const trex::Error& e) {
    std::cerr << "error: " << e.what() << "\n";
    return static_cast<int>(e.code());
  }
  return 0;
}
