// JSON files of a checkpoint (config.json, shard indexes): read with errors that name the file.
#pragma once

#include <filesystem>
#include <string>

#include <nlohmann/json.hpp>

namespace trex {

// Parses a whole JSON file. Throws InputError "<path>: cannot open: <reason>" or "<path>: invalid JSON: ...".
nlohmann::json read_json_file(const std::filesystem::path& path);

// "null", "boolean", "integer", "float", "string", "array" or "object", for type errors.
std::string json_type_name(const nlohmann::json& j);

}  // namespace trex
