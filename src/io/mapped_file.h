// Read-only memory map of a whole file (RAII).
#pragma once

#include <cstddef>
#include <filesystem>
#include <memory>
#include <string>

namespace trex {

class OpenFile;

class MappedFile {
 public:
  // Throws InputError("<path>: cannot open: <reason>") on failure. Empty files map to size 0.
  // Only regular files are opened (see io/safe_open.h).
  static std::shared_ptr<MappedFile> open(const std::filesystem::path& path);
  // Same, and the file's real path must stay inside `root`'s (symlinks resolved).
  static std::shared_ptr<MappedFile> open_in(const std::filesystem::path& root, const std::filesystem::path& path);
  // Maps an already opened regular file.
  static std::shared_ptr<MappedFile> map(const OpenFile& f);
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const std::byte* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  MappedFile() = default;
  const std::byte* data_ = nullptr;
  size_t size_ = 0;
  std::string path_;
};

}  // namespace trex
