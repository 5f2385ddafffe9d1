// config.json of a checkpoint: the fields every exporter needs, typed and validated, plus typed getters
// over the raw JSON for architecture-specific fields (each architecture file reads its own).
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace trex {

class ModelConfig {
 public:
  // Reads and validates <dir>/config.json. Throws InputError naming the file and the problem.
  static ModelConfig load(const std::filesystem::path& config_json);
  static ModelConfig from_json(const nlohmann::json& j, const std::string& file_for_messages);

  std::string model_type;                  // required
  std::vector<std::string> architectures;  // may be empty
  std::string torch_dtype;                 // "float32", "float16", "bfloat16" or ""
  std::map<int64_t, std::string> id2label; // may be empty
  std::optional<int64_t> num_labels_field; // "num_labels" when present

  // Number of labels for classification heads: id2label size, else num_labels, else 2 (transformers' default).
  int64_t num_labels() const;

  // Typed access to fields; errors name config.json, the key and the expected type.
  int64_t get_int(const std::string& key) const;                 // required
  int64_t get_int(const std::string& key, int64_t fallback) const;
  double get_float(const std::string& key) const;
  double get_float(const std::string& key, double fallback) const;
  std::string get_string(const std::string& key) const;
  std::string get_string(const std::string& key, const std::string& fallback) const;
  bool get_bool(const std::string& key, bool fallback) const;
  bool has(const std::string& key) const;
  // A required positive integer (e.g. hidden_size); error when <= 0.
  int64_t get_positive_int(const std::string& key) const;

  // The whole config.json, for nested fields an architecture reads itself (rope_scaling, layer_types).
  const nlohmann::json& raw() const { return raw_; }
  const std::string& file() const { return file_; }
  // Throws InputError("<config.json>: <problem>").
  [[noreturn]] void fail(const std::string& problem) const;

 private:
  nlohmann::json raw_;
  std::string file_;
};

}  // namespace trex
