#include "io/json_file.h"

#include <vector>

#include "io/safe_open.h"
#include "util/error.h"

namespace trex {

namespace {

using json = nlohmann::json;

// Thrown from the SAX handler; turned into an InputError with the file name.
struct JsonLimitExceeded {
  std::string problem;
};

// Builds the DOM from nlohmann's SAX events, enforcing the limits as it goes. (nlohmann's own callback parser
// is not used: it rescans the parent object after every nested object ends, which is quadratic in the number
// of entries of a safetensors header.)
class BoundedBuilder {
 public:
  explicit BoundedBuilder(size_t max_array) : max_array_(max_array) {}
  json result;
  std::string error;

  bool null() { return put(json(nullptr)); }
  bool boolean(bool v) { return put(json(v)); }
  bool number_integer(json::number_integer_t v) { return put(json(v)); }
  bool number_unsigned(json::number_unsigned_t v) { return put(json(v)); }
  bool number_float(json::number_float_t v, const std::string&) { return put(json(v)); }
  bool string(json::string_t& v) { return put(json(std::move(v))); }
  bool binary(json::binary_t& v) { return put(json::binary(std::move(v))); }
  bool start_object(std::size_t) { return open(json::object()); }
  bool start_array(std::size_t) { return open(json::array()); }
  bool end_object() { return close(); }
  bool end_array() { return close(); }
  bool key(json::string_t& k) {
    if (stack_.back()->contains(k)) {
      throw JsonLimitExceeded{"key '" + clip_for_message(k) + "' appears more than once"};
    }
    key_ = std::move(k);
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& e) {
    error = clip_for_message(e.what(), 300);
    return false;
  }

 private:
  // Where the next value goes: the root, the end of the open array, or the pending key of the open object.
  json* slot() {
    if (stack_.empty()) return &result;
    json& top = *stack_.back();
    if (top.is_array()) {
      if (top.size() >= max_array_) {
        throw JsonLimitExceeded{"an array has more than " + std::to_string(max_array_) + " elements"};
      }
      top.push_back(nullptr);
      return &top.back();
    }
    return &top[key_];
  }
  bool put(json v) {
    *slot() = std::move(v);
    return true;
  }
  bool open(json v) {
    // Values inside an open container are never moved while it is open (its parent is not modified), so the
    // pointers on the stack stay valid.
    if (stack_.size() >= static_cast<size_t>(kMaxJsonDepth)) {
      throw JsonLimitExceeded{"nesting deeper than " + std::to_string(kMaxJsonDepth) + " levels"};
    }
    json* s = slot();
    *s = std::move(v);
    stack_.push_back(s);
    return true;
  }
  bool close() {
    stack_.pop_back();
    return true;
  }

  size_t max_array_;
  std::vector<json*> stack_;
  std::string key_;
};

}  // namespace

nlohmann::json parse_json_bounded(std::string_view text, const std::string& file, const char* what,
                                  size_t max_array) {
  BoundedBuilder b(max_array);
  bool ok = false;
  try {
    ok = nlohmann::json::sax_parse(text.begin(), text.end(), &b);
  } catch (const JsonLimitExceeded& e) {
    throw InputError(file, std::string(what) + ": " + e.problem);
  } catch (const nlohmann::json::exception& e) {
    throw InputError(file, std::string(what) + ": " + clip_for_message(e.what(), 300));
  }
  if (!ok) throw InputError(file, std::string(what) + ": " + (b.error.empty() ? "parse error" : b.error));
  return std::move(b.result);
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
