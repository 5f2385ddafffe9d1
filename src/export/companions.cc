#include "export/companions.h"

#include <cstring>
#include <map>
#include <system_error>

#include <nlohmann/json.hpp>

#include "io/safe_open.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex {

namespace fs = std::filesystem;
using nlohmann::json;


namespace {

// A checkpoint file read as bytes: a regular file inside the checkpoint (a Hugging Face cache snapshot may point
// into its repository's blobs), at most 64 MiB.
std::string read_checkpoint_file(const fs::path& model_dir, const fs::path& file) {
  return open_regular_file_in(checkpoint_root(model_dir), file, uint64_t{64} << 20, "a companion file").read_all();
}

int64_t token_id(const ModelConfig& c, const json& generation, const char* key, int64_t fallback) {
  if (generation.contains(key) && generation[key].is_number_integer()) return generation[key].get<int64_t>();
  if (generation.contains(key) && generation[key].is_array() && !generation[key].empty() &&
      generation[key][0].is_number_integer())
    return generation[key][0].get<int64_t>();
  if (c.has(key) && c.raw()[key].is_array() && !c.raw()[key].empty() && c.raw()[key][0].is_number_integer())
    return c.raw()[key][0].get<int64_t>();  // Llama 3 lists several end tokens
  return c.get_int(key, fallback);
}

// onnxruntime-genai's model class: its own name for the families it knows; "decoder" (its generic decoder-only
// class, which reads the same input/output names) for the others — genai's "gpt2" class expects another graph.
std::string genai_type(const std::string& model_type) {
  for (const char* known : {"llama", "mistral", "qwen2", "qwen3", "phi3", "gemma"})
    if (model_type == known) return model_type;
  return "decoder";
}

json genai_config(const ModelConfig& c, const json& generation, const CompanionOptions& o) {
  const int64_t context = c.get_int("max_position_embeddings", c.get_int("n_positions", 2048));
  const int64_t eos = token_id(c, generation, "eos_token_id", 0);
  json eos_ids = json::array();
  if (generation.contains("eos_token_id") && generation["eos_token_id"].is_array()) eos_ids = generation["eos_token_id"];
  json decoder = {
      {"session_options", {{"log_id", "onnxruntime-genai"}, {"provider_options", json::array()}}},
      {"filename", o.model_file},
      {"head_size", o.head_dim},
      {"hidden_size", o.hidden},
      {"inputs",
       {{"input_ids", "input_ids"},
        {"attention_mask", "attention_mask"},
        {"position_ids", "position_ids"},
        {"past_key_names", "past_key_values.%d.key"},
        {"past_value_names", "past_key_values.%d.value"}}},
      {"outputs",
       {{"logits", "logits"}, {"present_key_names", "present.%d.key"}, {"present_value_names", "present.%d.value"}}},
      {"num_attention_heads", o.num_heads},
      {"num_hidden_layers", o.num_layers},
      {"num_key_value_heads", o.num_kv_heads},
  };
  json model = {
      {"bos_token_id", token_id(c, generation, "bos_token_id", 0)},
      {"context_length", context},
      {"decoder", decoder},
      {"eos_token_id", eos_ids.empty() ? json(eos) : eos_ids},
      {"pad_token_id", token_id(c, generation, "pad_token_id", eos)},
      {"type", genai_type(c.model_type)},
      {"vocab_size", o.vocab},
  };
  // A graph whose GroupQueryAttention nodes own the cache writes each step's keys/values into genai's max-length
  // buffers in place; any other grows it by concatenation (present = past ++ new), where the buffers must differ.
  json search = {{"diversity_penalty", 0.0},   {"do_sample", false},         {"early_stopping", true},
                 {"length_penalty", 1.0},      {"max_length", context},      {"min_length", 0},
                 {"no_repeat_ngram_size", 0},  {"num_beams", 1},             {"num_return_sequences", 1},
                 {"past_present_share_buffer", o.share_cache_buffer}, {"repetition_penalty", 1.0}, {"temperature", 1.0},
                 {"top_k", 1},                 {"top_p", 1.0}};
  return {{"model", model}, {"search", search}};
}

// sentence-transformers' description of the embedding (`trex run` pools and normalizes as it says): modules.json,
// its configs, and the config.json of each module folder it names (1_Pooling/, 2_Normalize/ when present).
std::vector<fs::path> sentence_transformers_files(const fs::path& model_dir) {
  std::error_code ec;
  std::vector<fs::path> files;
  if (!fs::exists(model_dir / "modules.json", ec)) return files;
  files.push_back("modules.json");
  for (const char* name : {"sentence_bert_config.json", "config_sentence_transformers.json"})
    if (fs::exists(model_dir / name, ec)) files.push_back(name);
  const json modules = json::parse(read_checkpoint_file(model_dir, model_dir / "modules.json"), nullptr, false);
  if (!modules.is_array()) throw InputError((model_dir / "modules.json").string(), "not a JSON array");
  for (const auto& m : modules) {
    const std::string path = m.is_object() && m.contains("path") && m["path"].is_string() ? m["path"].get<std::string>() : "";
    // A plain folder name: nothing that climbs out of the checkpoint or the output folder.
    if (path.empty() || path.find('/') != std::string::npos || path.find('\\') != std::string::npos || path == "." ||
        path == "..")
      continue;
    if (fs::exists(model_dir / path / "config.json", ec)) files.push_back(fs::path(path) / "config.json");
  }
  return files;
}

}  // namespace

bool kv_cache_updated_in_place(const onnx::GraphProto& graph) {
  auto starts_with = [](const std::string& s, const char* p) { return s.rfind(p, 0) == 0; };
  auto ends_with = [](const std::string& s, const std::string& t) {
    return s.size() >= t.size() && s.compare(s.size() - t.size(), t.size(), t) == 0;
  };
  auto is_gqa = [](const onnx::NodeProto& n) {
    return n.op_type() == "GroupQueryAttention" && n.domain() == "com.microsoft";
  };
  // past name -> the node (index) that reads it, present name -> the node that writes it
  std::map<std::string, int> past_reader, present_writer;
  size_t pasts = 0, presents = 0;
  for (const auto& in : graph.input())
    if (starts_with(in.name(), "past_key_values.")) ++pasts, past_reader[in.name()] = -1;
  for (const auto& out : graph.output())
    if (starts_with(out.name(), "present.")) ++presents, present_writer[out.name()] = -1;
  if (pasts == 0 || pasts != presents) return false;
  for (int i = 0; i < graph.node_size(); ++i) {
    const onnx::NodeProto& n = graph.node(i);
    for (int j = 0; j < n.input_size(); ++j) {
      auto it = past_reader.find(n.input(j));
      if (it == past_reader.end()) continue;
      const bool key = ends_with(n.input(j), ".key");
      if (!is_gqa(n) || j != (key ? 3 : 4) || it->second != -1) return false;  // read elsewhere, or twice
      it->second = i;
    }
    for (int j = 0; j < n.output_size(); ++j) {
      auto it = present_writer.find(n.output(j));
      if (it == present_writer.end()) continue;
      const bool key = ends_with(n.output(j), ".key");
      if (!is_gqa(n) || j != (key ? 1 : 2)) return false;
      it->second = i;
    }
  }
  // Each layer's present comes from the node that read the same layer's past.
  for (const auto& [past, reader] : past_reader) {
    if (reader < 0) return false;
    const std::string present = "present." + past.substr(std::strlen("past_key_values."));
    auto w = present_writer.find(present);
    if (w == present_writer.end() || w->second != reader) return false;
  }
  return true;
}

std::vector<fs::path> write_companion_files(const ModelConfig& config, const CompanionOptions& o) {
  std::error_code ec;
  if (fs::equivalent(o.model_dir, o.output_dir, ec))
    throw UsageError(o.output_dir.string() + ": the output folder is the checkpoint folder; choose another one");
  std::vector<fs::path> written;
  auto put = [&](const std::string& name, const std::string& bytes) {
    write_file_atomically(o.output_dir / name, bytes);
    written.push_back(o.output_dir / name);
  };
  put("config.json", read_checkpoint_file(o.model_dir, o.model_dir / "config.json"));

  json generation = json::object();
  const fs::path gen_path = o.model_dir / "generation_config.json";
  if (fs::exists(gen_path, ec)) {
    const std::string bytes = read_checkpoint_file(o.model_dir, gen_path);
    generation = json::parse(bytes, nullptr, /*allow_exceptions=*/false);
    if (!generation.is_object()) throw InputError(gen_path.string(), "not a JSON object");
    put("generation_config.json", bytes);
  } else if (o.task == Task::kCausalLM || o.task == Task::kSeq2SeqLM) {
    // transformers derives the defaults from config.json; write them so that the folder is complete.
    for (const char* key : {"bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id"})
      if (config.has(key) && config.raw()[key].is_number_integer()) {
        const int64_t v = config.raw()[key].get<int64_t>();
        if (v >= 0) generation[key] = v;
      }
    put("generation_config.json", generation.dump(2) + "\n");
  }
  for (const char* const* f = kTokenizerFiles; *f; ++f) {
    const fs::path p = o.model_dir / *f;
    if (fs::exists(p, ec)) put(*f, read_checkpoint_file(o.model_dir, p));
  }
  for (auto& f : sentence_transformers_files(o.model_dir)) {
    if (f.has_parent_path()) fs::create_directories(o.output_dir / f.parent_path());
    put(f.string(), read_checkpoint_file(o.model_dir, o.model_dir / f));
  }
  if (o.task == Task::kCausalLM) put("genai_config.json", genai_config(config, generation, o).dump(4) + "\n");
  return written;
}

}  // namespace trex
