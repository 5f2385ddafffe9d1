// Helpers shared by the CLI commands: output format from the extension, the files an ONNX model is made of,
// report writing, list options and the one-line error rule.
#pragma once

#include <filesystem>
#include <functional>
#include <string>
#include <vector>

namespace trex::cli {

// "onnx" or "torchscript": `format` when given, else from the output's extension (.pt/.pth: torchscript,
// anything else: onnx). Throws UsageError when `format` contradicts the extension (.onnx vs .pt).
std::string output_format(const std::string& format, const std::filesystem::path& output);

// The files an ONNX model is read from: the model, `<model>.data` and the external-data locations it names
// (relative to its folder). Locations are read off model files up to 256 MiB: a larger file holds its
// weights inline.
std::vector<std::filesystem::path> onnx_model_files(const std::filesystem::path& model);

// Writes `text` to `path` through a temporary file; OutputError naming `path` and `what` when it cannot.
void write_text_file(const std::filesystem::path& path, const std::string& text, const std::string& what);

// "a,b, c" → {"a", "b", "c"} (empty items dropped).
std::vector<std::string> split_list(const std::string& text);

// The error rule: one line. Newlines and tabs become spaces, terminal escape sequences (ANSI colours) are
// dropped, and a message longer than 2000 characters is cut.
std::string one_line(const std::string& message);

// For commands that run from their CLI11 callback (tokenize, run): runs `body`, prints a trex::Error (or any other
// exception, as an internal error) as one `trex: error:` line after flushing stdout, and exits the process with
// the error's exit code (or body's return value).
[[noreturn]] void run_and_exit(const std::function<int()>& body);

}  // namespace trex::cli
