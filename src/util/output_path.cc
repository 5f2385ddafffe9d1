#include "util/output_path.h"

#include <unistd.h>

#include <string>

#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

void check_output_path(const fs::path& out) {
  const fs::path dir = out.parent_path().empty() ? fs::path(".") : out.parent_path();
  std::error_code ec;
  if (!fs::is_directory(dir, ec))
    throw OutputError(out.string(), "cannot write: folder '" + dir.string() + "' does not exist");
  if (::access(dir.c_str(), W_OK) != 0)
    throw OutputError(out.string(), "cannot write: folder '" + dir.string() + "' is not writable");
  if (fs::is_directory(out, ec)) throw OutputError(out.string(), "cannot write: it is a folder");
}

fs::path temp_path_beside(const fs::path& out) {
  std::string name = ".";  // built by appends: GCC 12 warns falsely (-Wrestrict) on "." + std::string
  name += out.filename().string();
  name += ".tmp-";
  name += std::to_string(::getpid());
  return out.parent_path() / name;
}

}  // namespace trex
