// JSON of a checkpoint (config.json, shard indexes, safetensors headers): read with limits and errors that
// name the file. Limits: nesting depth, no key repeated within an object (a repeated key would otherwise
// silently keep the last value), file size (io/safe_open.h).
#pragma once

#include <filesystem>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace trex {

// Deepest nesting of arrays/objects accepted (the formats trex reads need 4 or 5).
inline constexpr int kMaxJsonDepth = 64;

// Longest array accepted by default.
inline constexpr size_t kMaxJsonArray = size_t{1} << 20;

// Parses JSON text in linear time. Throws InputError("<file>: <what>: <reason>") when it is not valid JSON,
// nests deeper than kMaxJsonDepth, has an array longer than `max_array`, or repeats a key inside one object.
nlohmann::json parse_json_bounded(std::string_view text, const std::string& file, const char* what = "invalid JSON",
                                  size_t max_array = kMaxJsonArray);

// Parses a whole JSON file of at most kMaxJsonFileBytes, which must be a regular file whose real path stays
// inside checkpoint_root(its folder). Throws InputError "<path>: cannot open: <reason>" or "<path>: invalid JSON: ...".
nlohmann::json read_json_file(const std::filesystem::path& path);

// "null", "boolean", "integer", "float", "string", "array" or "object", for type errors.
std::string json_type_name(const nlohmann::json& j);

// At most `n` bytes of `s` for an error message, with "..." when cut.
std::string clip_for_message(std::string_view s, size_t n = 80);

// A JSON value for an error message: its serialization, capped (nesting is already bounded by the parser).
std::string json_for_message(const nlohmann::json& j, size_t n = 80);

}  // namespace trex
