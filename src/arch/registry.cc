// model_type → architecture, and the task names. One line per architecture family.
#include <algorithm>

#include "arch/architecture.h"

namespace trex {

extern const Architecture kBertArchitecture;
extern const Architecture kRobertaArchitecture;
extern const Architecture kDistilBertArchitecture;
extern const Architecture kAlbertArchitecture;
extern const Architecture kElectraArchitecture;
extern const Architecture kGpt2Architecture;
extern const Architecture kLlamaArchitecture;
extern const Architecture kT5Architecture;
extern const Architecture kBartArchitecture;

namespace {
const Architecture* const kArchitectures[] = {
    &kBertArchitecture, &kRobertaArchitecture, &kDistilBertArchitecture, &kAlbertArchitecture, &kElectraArchitecture,
    &kGpt2Architecture, &kLlamaArchitecture, &kT5Architecture, &kBartArchitecture,
};

struct TaskName {
  const char* name;
  Task task;
};
// Modern (transformers task) names first: they are what task_name() prints.
const TaskName kTaskNames[] = {
    {"feature-extraction", Task::kFeatureExtraction},
    {"text-classification", Task::kSequenceClassification},
    {"token-classification", Task::kTokenClassification},
    {"question-answering", Task::kQuestionAnswering},
    {"fill-mask", Task::kMaskedLM},
    {"text-generation", Task::kCausalLM},
    {"text2text-generation", Task::kSeq2SeqLM},
    {"sentiment-analysis", Task::kSequenceClassification},  // the seed script's names
    {"ner", Task::kTokenClassification},
    {"sequence-classification", Task::kSequenceClassification},
    {"masked-lm", Task::kMaskedLM},
    {"causal-lm", Task::kCausalLM},
    {"text-generation-with-past", Task::kCausalLM},  // optimum's task name
    {"translation", Task::kSeq2SeqLM},
    {"summarization", Task::kSeq2SeqLM},
    {"translation_en_to_fr", Task::kSeq2SeqLM},  // the seed's names
    {"translation_en_to_de", Task::kSeq2SeqLM},
    {"translation_en_to_ro", Task::kSeq2SeqLM},
    {"text2text-generation-with-past", Task::kSeq2SeqLM},
    {"default", Task::kFeatureExtraction},
};
}  // namespace

const Architecture* find_architecture(const std::string& model_type) {
  for (const Architecture* a : kArchitectures)
    if (std::find(a->model_types.begin(), a->model_types.end(), model_type) != a->model_types.end()) return a;
  return nullptr;
}

std::vector<std::string> supported_model_types() {
  std::vector<std::string> out;
  for (const Architecture* a : kArchitectures) out.insert(out.end(), a->model_types.begin(), a->model_types.end());
  return out;
}

std::string task_name(Task t) {
  for (const auto& n : kTaskNames)
    if (n.task == t) return n.name;
  return "?";
}

std::optional<Task> parse_task(const std::string& name) {
  for (const auto& n : kTaskNames)
    if (name == n.name) return n.task;
  return std::nullopt;
}

std::string known_task_names() {
  std::string s;
  for (const auto& n : kTaskNames) s += (s.empty() ? "" : ", ") + std::string(n.name);
  return s;
}

Task default_task(const ModelConfig& config) {
  if (config.architectures.empty()) return Task::kFeatureExtraction;
  const std::string& a = config.architectures[0];
  auto ends_with = [&](const std::string& suffix) {
    return a.size() >= suffix.size() && a.compare(a.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  if (ends_with("ForSequenceClassification")) return Task::kSequenceClassification;
  if (ends_with("ForTokenClassification")) return Task::kTokenClassification;
  if (ends_with("ForQuestionAnswering")) return Task::kQuestionAnswering;
  if (ends_with("ForMaskedLM")) return Task::kMaskedLM;
  if (ends_with("ForCausalLM") || ends_with("LMHeadModel")) return Task::kCausalLM;
  if (ends_with("ForConditionalGeneration") || ends_with("MTModel")) return Task::kSeq2SeqLM;
  return Task::kFeatureExtraction;
}

}  // namespace trex
