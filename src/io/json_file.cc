#include "io/json_file.h"

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "util/error.h"

namespace trex {

nlohmann::json read_json_file(const std::filesystem::path& path) {
  const std::string f = path.string();
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw InputError(f, "cannot open: is a directory");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw InputError(f, std::string("cannot open: ") + std::strerror(errno));
  std::stringstream ss;
  ss << in.rdbuf();
  try {
    return nlohmann::json::parse(ss.str());
  } catch (const nlohmann::json::exception& e) {
    throw InputError(f, std::string("invalid JSON: ") + e.what());
  }
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

}  // namespace trex
