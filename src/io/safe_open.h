// Opening the files trex reads: regular files only, confined to the folder they belong to, size-capped.
//
// Every reader (config.json, shard indexes, safetensors, .bin, ONNX models and their external data) opens
// its files through here, so that a hostile checkpoint cannot make trex read a FIFO (hang), a device
// (/dev/zero: unbounded read), a directory, or a file outside its folder through a symlink or a `..` path.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <string>

namespace trex {

// Size caps (documented in README.md, "Limits on inputs").
inline constexpr uint64_t kMaxJsonFileBytes = uint64_t{16} << 20;         // config.json, shard indexes
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = uint64_t{32} << 20;  // ~250,000 tensor entries
inline constexpr size_t kMaxSafetensorsArray = 64;                         // shape rank, data_offsets
inline constexpr uint64_t kNoSizeLimit = ~uint64_t{0};

// An open, read-only file descriptor of a regular file (RAII).
class OpenFile {
 public:
  OpenFile() = default;
  OpenFile(int fd, uint64_t size, std::string path) : fd_(fd), size_(size), path_(std::move(path)) {}
  ~OpenFile();
  OpenFile(OpenFile&& o) noexcept;
  OpenFile& operator=(OpenFile&& o) noexcept;
  OpenFile(const OpenFile&) = delete;
  OpenFile& operator=(const OpenFile&) = delete;

  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }  // as given, for messages
  // Reads the whole file (at most size() bytes as seen at open). Throws InputError on a read error.
  std::string read_all() const;

 private:
  friend OpenFile open_regular_file(const std::filesystem::path&, uint64_t, const char*);
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string path_;
};

// Opens `path` read-only as a regular file of at most `max_size` bytes. FIFOs, sockets, devices and
// directories are refused before any blocking open (stat first, then open with O_NONBLOCK and fstat).
// Throws InputError("<path>: cannot open: <reason>") / "<path>: is N bytes, above the limit of M for ...".
OpenFile open_regular_file(const std::filesystem::path& path, uint64_t max_size = kNoSizeLimit,
                           const char* what = "this file");

// Same, and the real path of `path` (symlinks resolved) must lie inside the real path of `root`.
// `path` may be relative (to the current directory, like any path the user gives) or absolute.
OpenFile open_regular_file_in(const std::filesystem::path& root, const std::filesystem::path& path,
                              uint64_t max_size = kNoSizeLimit, const char* what = "this file");

// True when the real path of `path` (symlinks resolved, missing tail allowed) is `root`'s real path or below it.
bool real_path_inside(const std::filesystem::path& root, const std::filesystem::path& path);

// The folder the files of checkpoint (or model) folder `dir` may live in: `dir` itself, or, inside a Hugging Face
// hub cache snapshot (<repo>/snapshots/<revision>/[subfolder/], whose files are symlinks to <repo>/blobs/), the
// repository folder.
std::filesystem::path checkpoint_root(const std::filesystem::path& dir);

}  // namespace trex
