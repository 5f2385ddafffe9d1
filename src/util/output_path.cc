#include "util/output_path.h"

#include <unistd.h>

#include <fstream>
#include <string>

#include "util/error.h"
#include "util/strings.h"

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

void write_file_atomically(const fs::path& dst, const std::string& bytes) {
  const fs::path tmp = temp_path_beside(dst);
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
    f.close();
    if (!f) {
      std::error_code ec;
      fs::remove(tmp, ec);
      throw OutputError(dst.string(), "cannot write");
    }
  }
  std::error_code ec;
  fs::rename(tmp, dst, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw OutputError(dst.string(), "cannot write: " + ec.message());
  }
}

bool same_file(const fs::path& a, const fs::path& b) {
  std::error_code ec_a, ec_b;
  const fs::path ca = fs::weakly_canonical(fs::absolute(a, ec_a), ec_a);
  const fs::path cb = fs::weakly_canonical(fs::absolute(b, ec_b), ec_b);
  if (!ec_a && !ec_b && ca == cb) return true;
  std::error_code ec;
  return fs::exists(a, ec) && fs::exists(b, ec) && fs::equivalent(a, b, ec) && !ec;
}

void check_outputs_not_inputs(const std::vector<fs::path>& outputs, const std::vector<fs::path>& inputs) {
  for (size_t i = 0; i < outputs.size(); ++i) {
    for (const auto& in : inputs)
      if (same_file(outputs[i], in))
        throw UsageError(outputs[i].string() + ": the output would overwrite an input (" + in.string() +
                         "); choose another output path");
    for (size_t j = 0; j < i; ++j)
      if (same_file(outputs[i], outputs[j]))
        throw UsageError(outputs[i].string() + ": the same file would be written twice (also " +
                         outputs[j].string() + "); choose another output path");
  }
}

std::vector<fs::path> checkpoint_input_files(const fs::path& dir) {
  std::vector<fs::path> files;
  std::error_code ec;
  fs::directory_iterator it(dir, ec), end;
  for (; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    if (name == "config.json" || ends_with(name, ".safetensors") || ends_with(name, ".bin") ||
        ends_with(name, ".index.json") || ends_with(name, ".h5"))
      files.push_back(it->path());
  }
  files.push_back(dir / "config.json");  // even when missing: never create it from an output either
  return files;
}

OutputFolders::~OutputFolders() {
  if (keep_) return;
  std::error_code ec;
  for (auto it = created_.rbegin(); it != created_.rend(); ++it) fs::remove(*it, ec);  // only if empty
}

void OutputFolders::create_parents_of(const fs::path& out) {
  std::vector<fs::path> missing;  // innermost first
  std::error_code ec;
  for (fs::path dir = out.parent_path(); !dir.empty(); dir = dir.parent_path()) {
    if (fs::exists(dir, ec)) {
      if (!fs::is_directory(dir, ec))
        throw OutputError(out.string(), "cannot write: '" + dir.string() + "' is not a folder");
      break;
    }
    missing.push_back(dir);
    if (dir == dir.parent_path()) break;
  }
  for (auto it = missing.rbegin(); it != missing.rend(); ++it) {
    if (!fs::create_directory(*it, ec) && ec)
      throw OutputError(out.string(), "cannot create folder '" + it->string() + "': " + ec.message());
    created_.push_back(*it);
  }
}

}  // namespace trex
