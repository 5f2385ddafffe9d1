#include "io/json_file.h"

#include <unordered_set>
#include <vector>

#include "io/safe_open.h"
#include "util/error.h"

namespace trex {

namespace {

// Thrown from the parser callback; turned into an InputError with the file name.
struct JsonLimitExceeded {
  std::string problem;
};

}  // namespace

nlohmann::json parse_json_bounded(std::string_view text, const std::string& file, const char* what) {
  using Event = nlohmann::json::parse_event_t;
  // Keys seen in each open object (innermost last).
  std::vector<std::unordered_set<std::string>> keys;
  auto limits = [&keys](int depth, Event event, nlohmann::json& parsed) -> bool {
    switch (event) {
      case Event::object_start:
      case Event::array_start:
        // `depth` counts the containers already open around this one.
        if (depth >= kMaxJsonDepth) {
          throw JsonLimitExceeded{"nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
        }
        if (event == Event::object_start) keys.emplace_back();
        break;
      case Event::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case Event::key:
        if (!keys.empty() && parsed.is_string() && !keys.back().insert(parsed.get<std::string>()).second) {
          throw JsonLimitExceeded{"key '" + clip_for_message(parsed.get<std::string>()) + "' appears more than once"};
        }
        break;
      default:
        break;
    }
    return true;
  };
  try {
    return nlohmann::json::parse(text.begin(), text.end(), limits);
  } catch (const JsonLimitExceeded& e) {
    throw InputError(file, std::string(what) + ": " + e.problem);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file, std::string(what) + ": " + clip_for_message(e.what(), 300));
  }
}

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::filesystem::path dir = path.parent_path().empty() ? std::filesystem::path(".") : path.parent_path();
  const OpenFile f = open_regular_file_in(checkpoint_root(dir), path, kMaxJsonFileBytes, "a JSON file");
  return parse_json_bounded(f.read_all(), path.string());
}

std::string json_type_name(const nlohmann::json& j) {
  if (j.is_null()) return "null";
  if (j.is_boolean()) return "boolean";
  if (j.is_number_integer()) return "integer";
  if (j.is_number_float()) return "float";
  if (j.is_string()) return "string";
  if (j.is_array()) return "array";
  if (j.is_object()) return "object";
  return "value";
}

std::string clip_for_message(std::string_view s, size_t n) {
  if (s.size() <= n) return std::string(s);
  size_t cut = n;
  while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  return std::string(s.substr(0, cut)) + "...";
}

std::string json_for_message(const nlohmann::json& j, size_t n) {
  // Serialize only small values (at most 64 nodes, counted without recursion); a big one is described.
  size_t nodes = 0;
  std::vector<const nlohmann::json*> work{&j};
  while (!work.empty() && nodes <= 64) {
    const nlohmann::json* v = work.back();
    work.pop_back();
    ++nodes;
    if (!v->is_structured()) continue;
    if (v->size() > 64) {
      nodes = 65;
      break;
    }
    for (const auto& c : *v) work.push_back(&c);
  }
  if (nodes > 64) return json_type_name(j) + " of " + std::to_string(j.size()) + " items";
  return clip_for_message(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), n);
}

}  // namespace trex
