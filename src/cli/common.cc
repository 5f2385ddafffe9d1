#include "cli/common.h"

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "onnx/onnx.pb.h"
#include "onnx/writer.h"
#include "util/error.h"
#include "util/output_path.h"

namespace trex::cli {

namespace fs = std::filesystem;

std::string output_format(const std::string& format, const fs::path& output) {
  std::string ext = output.extension().string();
  std::transform(ext.begin(), ext.end(), ext.begin(), [](unsigned char c) { return std::tolower(c); });
  const std::string implied = ext == ".onnx" ? "onnx" : (ext == ".pt" || ext == ".pth") ? "torchscript" : "";
  if (format.empty()) return implied.empty() ? "onnx" : implied;
  if (!implied.empty() && implied != format)
    throw UsageError(output.string() + ": --format " + format + " contradicts the '" + ext + "' extension (" +
                     implied + "); drop --format or change the extension");
  return format;
}

std::vector<fs::path> onnx_model_files(const fs::path& model) {
  std::vector<fs::path> files{model, external_data_path(model)};
  std::error_code ec;
  if (!fs::is_regular_file(model, ec) || fs::file_size(model, ec) > (size_t{256} << 20) || ec) return files;
  std::ifstream in(model, std::ios::binary);
  onnx::ModelProto proto;
  if (!in || !proto.ParseFromIstream(&in)) return files;  // the reader reports what is wrong with it
  const fs::path dir = model.parent_path();
  for (const auto& t : proto.graph().initializer())
    for (const auto& kv : t.external_data())
      if (kv.key() == "location" && !kv.value().empty() &&
          std::find(files.begin(), files.end(), dir / kv.value()) == files.end())
        files.push_back(dir / kv.value());
  return files;
}

void write_text_file(const fs::path& path, const std::string& text, const std::string& what) {
  const fs::path tmp = temp_path_beside(path);
  std::error_code ec;
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    f << text;
    f.close();
    if (!f) {
      fs::remove(tmp, ec);
      throw OutputError(path.string(), "cannot write " + what);
    }
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    fs::remove(tmp, ec);
    throw OutputError(path.string(), "cannot write " + what + ": " + ec.message());
  }
}

std::vector<std::string> split_list(const std::string& text) {
  std::vector<std::string> items;
  size_t start = 0;
  while (start <= text.size()) {
    size_t end = text.find(',', start);
    if (end == std::string::npos) end = text.size();
    std::string item = text.substr(start, end - start);
    item.erase(0, item.find_first_not_of(" \t"));
    item.erase(item.find_last_not_of(" \t") + 1);
    if (!item.empty()) items.push_back(item);
    start = end + 1;
  }
  return items;
}

std::string one_line(const std::string& message) {
  constexpr size_t kMaxChars = 2000;
  std::string out;
  out.reserve(std::min(message.size(), kMaxChars));
  for (size_t i = 0; i < message.size() && out.size() < kMaxChars; ++i) {
    const char c = message[i];
    if (c == '\x1b') {  // CSI sequence: ESC [ parameters final-byte
      if (i + 1 < message.size() && message[i + 1] == '[') {
        i += 2;
        while (i < message.size() && !(message[i] >= '@' && message[i] <= '~')) ++i;
      }
      continue;
    }
    if (c == '\n' || c == '\r' || c == '\t') {
      if (!out.empty() && out.back() != ' ') out += ' ';
      continue;
    }
    out += c;
  }
  while (!out.empty() && out.back() == ' ') out.pop_back();
  if (out.size() >= kMaxChars && message.size() > kMaxChars) out += " ...";
  return out;
}

void run_and_exit(const std::function<int()>& body) {
  int rc;
  try {
    rc = body();
  } catch (const trex::Error& e) {
    std::fflush(stdout);
    std::cerr << "trex: error: " << one_line(e.what()) << "\n";
    rc = static_cast<int>(e.code());
  } catch (const std::exception& e) {
    std::fflush(stdout);
    std::cerr << "trex: error: internal error: " << one_line(e.what()) << "\n";
    rc = static_cast<int>(trex::ExitCode::kInternal);
  }
  std::fflush(stdout);
  std::exit(rc);
}

}  // namespace trex::cli
