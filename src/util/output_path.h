// Checks and temporary names for files trex writes. Every writer writes to a temporary file beside its
// output and renames it at the end, so a failure never leaves a partial output behind.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

namespace trex {

// Throws OutputError naming `out` when its folder does not exist or is not writable, or `out` is a folder.
void check_output_path(const std::filesystem::path& out);

// `.<name>.tmp-<pid>` in the same folder as `out` (same file system, so the final rename is atomic).
std::filesystem::path temp_path_beside(const std::filesystem::path& out);

// Writes `bytes` to `out` through a temporary file beside it, renamed at the end (OutputError naming `out`).
void write_file_atomically(const std::filesystem::path& out, const std::string& bytes);

// True when `a` and `b` name the same file: same path once `.`/`..` and symlinks are resolved
// (weakly_canonical, so `b` need not exist), or the same inode (hard links, bind mounts).
bool same_file(const std::filesystem::path& a, const std::filesystem::path& b);

// Never overwrite an input: throws UsageError naming the output when any of `outputs` is the same file as
// any of `inputs` (see same_file), or when two outputs are the same file. Call before anything is written.
void check_outputs_not_inputs(const std::vector<std::filesystem::path>& outputs,
                              const std::vector<std::filesystem::path>& inputs);

// The files of a checkpoint folder trex may read: config.json, *.safetensors, *.bin and shard indexes
// (*.index.json) directly in `dir` (symlinks included). Outputs are checked against these.
std::vector<std::filesystem::path> checkpoint_input_files(const std::filesystem::path& dir);

// Output folders: creates the missing folders above each output (mkdir -p) and, unless keep() was called
// (the run succeeded), removes the ones it created again when destroyed, so a failed run leaves the file
// system as it found it. Only empty folders are removed: nothing the user put there meanwhile is touched.
class OutputFolders {
 public:
  OutputFolders() = default;
  OutputFolders(const OutputFolders&) = delete;
  OutputFolders& operator=(const OutputFolders&) = delete;
  ~OutputFolders();

  // Throws OutputError naming `out` when a folder cannot be created (e.g. a parent is a regular file).
  void create_parents_of(const std::filesystem::path& out);
  void keep() { keep_ = true; }

 private:
  std::vector<std::filesystem::path> created_;  // outermost first
  bool keep_ = false;
};

}  // namespace trex
