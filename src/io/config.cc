#include "io/config.h"

#include <limits>
#include <map>

#include "io/json_file.h"
#include "util/error.h"

namespace trex {

ModelConfig ModelConfig::load(const std::filesystem::path& config_json) {
  return from_json(read_json_file(config_json), config_json.string());
}

ModelConfig ModelConfig::from_json(const nlohmann::json& j, const std::string& file_for_messages) {
  ModelConfig c;
  c.file_ = file_for_messages;
  if (!j.is_object()) c.fail("must be a JSON object, got " + json_type_name(j));
  c.raw_ = j;
  if (!j.contains("model_type")) c.fail("missing 'model_type'");
  if (!j["model_type"].is_string()) c.fail("'model_type' must be a string, got " + json_type_name(j["model_type"]));
  c.model_type = j["model_type"].get<std::string>();
  if (c.model_type.empty()) c.fail("'model_type' is empty");

  if (j.contains("architectures") && !j["architectures"].is_null()) {
    const auto& a = j["architectures"];
    if (!a.is_array()) c.fail("'architectures' must be a list of strings, got " + json_type_name(a));
    for (const auto& e : a) {
      if (!e.is_string()) c.fail("'architectures' must be a list of strings, got an element of type " + json_type_name(e));
      c.architectures.push_back(e.get<std::string>());
    }
  }
  for (const char* key : {"torch_dtype", "dtype"}) {
    if (!j.contains(key) || j[key].is_null()) continue;
    if (!j[key].is_string()) c.fail(std::string("'") + key + "' must be a string, got " + json_type_name(j[key]));
    c.torch_dtype = j[key].get<std::string>();
    break;
  }
  if (j.contains("id2label") && !j["id2label"].is_null()) {
    const auto& m = j["id2label"];
    if (!m.is_object()) c.fail("'id2label' must be an object, got " + json_type_name(m));
    for (auto it = m.begin(); it != m.end(); ++it) {
      const std::string& k = it.key();
      int64_t id = 0;
      size_t used = 0;
      bool ok = !k.empty();
      try {
        id = std::stoll(k, &used);
      } catch (const std::exception&) {
        ok = false;
      }
      if (!ok || used != k.size() || id < 0) c.fail("'id2label' key '" + k + "' is not a non-negative integer");
      if (!it.value().is_string()) c.fail("'id2label[" + k + "]' must be a string, got " + json_type_name(it.value()));
      if (!c.id2label.emplace(id, it.value().get<std::string>()).second) c.fail("'id2label' repeats id " + k);
    }
  }
  if (j.contains("num_labels") && !j["num_labels"].is_null()) c.num_labels_field = c.get_positive_int("num_labels");
  return c;
}

int64_t ModelConfig::num_labels() const {
  if (!id2label.empty()) return static_cast<int64_t>(id2label.size());
  if (num_labels_field) return *num_labels_field;
  return 2;
}

void ModelConfig::fail(const std::string& problem) const { throw InputError(file_, problem); }

bool ModelConfig::has(const std::string& key) const { return raw_.is_object() && raw_.contains(key); }

namespace {

// Upper bounds for size fields, far above any real model: a hostile config.json asking for a billion layers
// fails here at once, instead of after building names and graphs for every layer.
int64_t sanity_max(const std::string& key) {
  static const std::map<std::string, int64_t> kMax = {
      {"num_hidden_layers", 1024},      {"n_layers", 1024},
      {"num_layers", 1024},             {"num_hidden_groups", 1024},
      {"inner_group_num", 1024},        {"num_attention_heads", 1 << 16},
      {"n_heads", 1 << 16},             {"hidden_size", 1 << 20},
      {"dim", 1 << 20},                 {"embedding_size", 1 << 20},
      {"intermediate_size", 1 << 22},   {"hidden_dim", 1 << 22},
      {"vocab_size", 1 << 26},          {"max_position_embeddings", 1 << 24},
      {"type_vocab_size", 1 << 20},     {"num_labels", 1 << 24},
  };
  auto it = kMax.find(key);
  return it == kMax.end() ? std::numeric_limits<int64_t>::max() : it->second;
}

const nlohmann::json* lookup(const nlohmann::json& raw, const std::string& key) {
  if (!raw.is_object()) return nullptr;
  auto it = raw.find(key);
  if (it == raw.end()) return nullptr;
  return &*it;
}

}  // namespace

int64_t ModelConfig::get_int(const std::string& key) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr) fail("missing '" + key + "'");
  int64_t value = 0;
  if (v->is_number_unsigned()) {
    const uint64_t u = v->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) fail("'" + key + "' is too large");
    value = static_cast<int64_t>(u);
  } else if (v->is_number_integer()) {
    value = v->get<int64_t>();
  } else {
    fail("'" + key + "' must be an integer, got " + json_type_name(*v));
  }
  if (value > sanity_max(key)) {
    fail("'" + key + "' is " + std::to_string(value) + ", above trex's sanity limit of " +
         std::to_string(sanity_max(key)));
  }
  return value;
}

int64_t ModelConfig::get_int(const std::string& key, int64_t fallback) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr || v->is_null()) return fallback;
  return get_int(key);
}

double ModelConfig::get_float(const std::string& key) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr) fail("missing '" + key + "'");
  if (v->is_number()) return v->get<double>();
  fail("'" + key + "' must be a number, got " + json_type_name(*v));
}

double ModelConfig::get_float(const std::string& key, double fallback) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr || v->is_null()) return fallback;
  return get_float(key);
}

std::string ModelConfig::get_string(const std::string& key) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr) fail("missing '" + key + "'");
  if (v->is_string()) return v->get<std::string>();
  fail("'" + key + "' must be a string, got " + json_type_name(*v));
}

std::string ModelConfig::get_string(const std::string& key, const std::string& fallback) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr || v->is_null()) return fallback;
  return get_string(key);
}

bool ModelConfig::get_bool(const std::string& key, bool fallback) const {
  const nlohmann::json* v = lookup(raw_, key);
  if (v == nullptr || v->is_null()) return fallback;
  if (v->is_boolean()) return v->get<bool>();
  fail("'" + key + "' must be a boolean, got " + json_type_name(*v));
}

int64_t ModelConfig::get_positive_int(const std::string& key) const {
  const int64_t v = get_int(key);
  if (v <= 0) fail("'" + key + "' must be a positive integer, got " + std::to_string(v));
  return v;
}

}  // namespace trex
