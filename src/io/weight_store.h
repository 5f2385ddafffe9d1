// All tensors of a checkpoint folder, by their state_dict names, without copying the bytes.
//
// Supported layouts (checked in this order):
//   model.safetensors, model.safetensors.index.json (+ shards),
//   pytorch_model.bin (zip or legacy format), pytorch_model.bin.index.json (+ shards).
// Old LayerNorm names (`*.LayerNorm.gamma` / `*.LayerNorm.beta`) are exposed as `.weight` / `.bias`.
#pragma once

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor.h"

namespace trex {

class MappedFile;

class WeightStore {
 public:
  // Opens every weight file of a checkpoint folder. Throws InputError naming the file and problem.
  static WeightStore open_dir(const std::filesystem::path& dir);
  // Opens one weights file (.safetensors or .bin), or a shard index (*.index.json).
  static WeightStore open_file(const std::filesystem::path& file);

  WeightStore();
  ~WeightStore();
  WeightStore(WeightStore&&) noexcept;
  WeightStore& operator=(WeightStore&&) noexcept;

  // nullptr when absent.
  const TensorView* find(const std::string& name) const;
  bool contains(const std::string& name) const { return find(name) != nullptr; }
  std::vector<std::string> names() const;  // sorted
  size_t size() const { return tensors_.size(); }
  // Total bytes of all tensors (as stored).
  size_t total_bytes() const;
  // The files read, for messages ("model.safetensors", "pytorch_model-00001-of-00002.bin", ...).
  const std::vector<std::string>& files() const { return files_; }

  // Used by readers: adds a tensor; throws InputError on a duplicate name.
  void add(TensorView t);
  // Keeps a mapped file alive as long as the store.
  void keep(std::shared_ptr<MappedFile> f);
  void add_file(std::string f) { files_.push_back(std::move(f)); }
  // Owns bytes that had to be materialized (e.g. a non-contiguous .bin tensor); returns stable pointer.
  const std::byte* own(std::vector<std::byte> bytes);

 private:
  std::map<std::string, TensorView> tensors_;
  std::vector<std::shared_ptr<MappedFile>> mapped_;
  std::vector<std::unique_ptr<std::vector<std::byte>>> owned_;
  std::vector<std::string> files_;
};

}  // namespace trex
