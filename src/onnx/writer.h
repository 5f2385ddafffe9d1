// Writes a Model to disk: protobuf structure from the graph, initializer bytes streamed from their sources,
// external data beside the model when asked or when the file would pass protobuf's 2 GB limit.
// Atomic: everything goes to temporary files in the output folder, renamed into place at the end;
// on any failure nothing is left behind.
#pragma once

#include <cstddef>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "graph/model.h"

namespace trex {

enum class ExternalData { kAuto, kAlways, kNever };

// One external-data file shared by the graphs of a set (encoder + decoder): each initializer is stored once, at
// its first request, and every graph holding an initializer of the same name, type and shape points at those
// bytes (names come from the checkpoint or from what is derived from it, so equal names mean equal bytes within
// one export). The file is written to a temporary name and appears only on commit().
struct WriteOptions;

class SharedExternalData {
 public:
  explicit SharedExternalData(std::filesystem::path path);
  ~SharedExternalData();  // removes the temporary file unless committed
  SharedExternalData(const SharedExternalData&) = delete;
  SharedExternalData& operator=(const SharedExternalData&) = delete;

  const std::filesystem::path& path() const { return path_; }
  size_t bytes() const;
  // Writes through the page cache from now on instead of O_DIRECT (WriteOptions::direct_io).
  void use_page_cache();
  // Where `init` lives in the file, and whether this call wrote it.
  struct Place {
    size_t offset = 0, length = 0;
    bool written_now = false;
  };
  Place place(const std::string& key, const Initializer& init, const WriteOptions& options);
  void commit();  // close and rename into place (OutputError on failure)

 private:
  struct Impl;
  std::filesystem::path path_;
  std::unique_ptr<Impl> impl_;
};

struct WriteOptions {
  ExternalData external = ExternalData::kAuto;
  // kAuto switches to external data when the single file would exceed this many bytes.
  size_t single_file_limit = (size_t{1} << 31) - (size_t{64} << 20);
  // With external data, initializers smaller than this stay inside the .onnx file.
  size_t external_min_bytes = 1024;
  // Floating initializers of more than one element are checked for NaN/Inf while they are written (the bytes
  // are in cache then); one is an InputError naming the tensor unless this is set (`--allow-nonfinite`).
  // Single-element constants are not checked (other exporters' -inf mask fills).
  bool allow_nonfinite = false;
  // Named in the non-finite error (the checkpoint folder or input model); the tensor name alone when empty.
  std::string source_for_messages;
  // Called after each initializer written (bytes done, bytes total); may be empty.
  std::function<void(size_t, size_t)> progress;
  // When set, the weights go to this shared file (whatever `external` says) instead of <model>.data.
  SharedExternalData* shared = nullptr;
  // Large aligned writes bypass the page cache (O_DIRECT): faster to write on a large model, but whatever reads
  // the file next (the load check) reads it back from disk. Off: buffered writes, the file stays cached.
  bool direct_io = true;
};

struct WriteResult {
  std::filesystem::path model_path;
  std::filesystem::path data_path;  // empty without external data
  size_t model_bytes = 0;
  size_t data_bytes = 0;  // with a shared file: the bytes this model added to it
};

// Throws OutputError naming the path when it cannot be written (missing folder, permissions, disk full),
// and UsageError when kNever is asked for a model that cannot fit one file.
WriteResult write_model(const Model& model, const std::filesystem::path& path, const WriteOptions& options = {});

// Index of the first NaN/Inf element of `n` bytes of floating `dtype` data, or -1 (also for non-float dtypes).
int64_t first_nonfinite(DType dtype, const std::byte* data, size_t n);

// Checks every floating initializer of `model` as write_model does (for writers other than the ONNX one, e.g.
// TorchScript). Throws InputError naming `source` (when not empty) and the tensor.
void check_initializers_finite(const Model& model, const std::string& source);

// The .onnx.data path used for a model path.
std::filesystem::path external_data_path(const std::filesystem::path& model_path);

}  // namespace trex
