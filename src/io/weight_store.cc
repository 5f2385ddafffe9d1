#include "io/weight_store.h"

#include <algorithm>
#include <set>

#include <nlohmann/json.hpp>

#include "io/checkpoint_weights.h"
#include "io/h5_checkpoint.h"
#include "io/mapped_file.h"
#include "io/safetensors.h"
#include "io/json_file.h"
#include "io/torch_bin.h"
#include "util/error.h"
#include "util/strings.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

// Old checkpoints name LayerNorm parameters gamma/beta; transformers renames them to weight/bias.
std::string canonical_name(const std::string& name) {
  if (name.find("LayerNorm") == std::string::npos) return name;
  if (ends_with(name, ".gamma")) return name.substr(0, name.size() - 6) + ".weight";
  if (ends_with(name, ".beta")) return name.substr(0, name.size() - 5) + ".bias";
  return name;
}

bool is_safetensors_name(const std::string& f) { return ends_with(f, ".safetensors"); }

void read_weights_file(const fs::path& file, WeightStore& store) {
  if (is_safetensors_name(file.filename().string())) {
    read_safetensors(file, store);
  } else {
    read_torch_bin(file, store);
  }
}

void read_index(const fs::path& index, WeightStore& store) {
  const std::string iname = index.string();
  const nlohmann::json j = read_json_file(index);
  std::error_code ec;
  if (!j.is_object()) throw InputError(iname, "shard index must be a JSON object");
  if (!j.contains("weight_map") || !j["weight_map"].is_object()) {
    throw InputError(iname, "shard index has no 'weight_map' object");
  }
  const auto& wm = j["weight_map"];
  if (wm.empty()) throw InputError(iname, "'weight_map' is empty");
  const fs::path dir = index.parent_path();
  // name -> shard, and the shards in first-seen order.
  std::vector<std::pair<std::string, std::string>> entries;
  std::vector<std::string> shards;
  std::set<std::string> seen;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string()) {
      throw InputError(iname, "weight_map['" + clip_for_message(it.key()) + "'] must be a shard file name (string)");
    }
    const std::string shard = it.value().get<std::string>();
    if (shard.empty() || shard == "." || shard == ".." || shard.find('/') != std::string::npos ||
        shard.find('\\') != std::string::npos || shard.find('\0') != std::string::npos ||
        shard.find("..") == 0) {
      throw InputError(iname, "shard path '" + clip_for_message(shard) +
                                  "' leaves the checkpoint folder (shards must be plain file names next to the index)");
    }
    entries.emplace_back(it.key(), shard);
    if (seen.insert(shard).second) shards.push_back(shard);
  }
  for (const auto& shard : shards) {
    const fs::path p = dir / shard;
    if (!fs::exists(p, ec)) throw InputError(iname, "shard '" + shard + "' is missing (" + p.string() + ")");
    read_weights_file(p, store);
  }
  for (const auto& [name, shard] : entries) {
    const TensorView* t = store.find(canonical_name(name));
    if (t == nullptr) throw InputError(iname, "tensor '" + name + "' is listed in weight_map but absent from shard '" + shard + "'");
    if (fs::path(t->file).filename().string() != shard) {
      throw InputError(iname, "tensor '" + name + "' is listed in shard '" + shard + "' but found in '" +
                                  fs::path(t->file).filename().string() + "'");
    }
  }
}

}  // namespace

WeightStore::WeightStore() = default;
WeightStore::~WeightStore() = default;
WeightStore::WeightStore(WeightStore&&) noexcept = default;
WeightStore& WeightStore::operator=(WeightStore&&) noexcept = default;

WeightStore WeightStore::open_dir(const fs::path& dir) { return open_checkpoint_weights(dir, Framework::kAuto); }

WeightStore WeightStore::open_file(const fs::path& file) {
  WeightStore store;
  const std::string fname = file.filename().string();
  if (ends_with(fname, ".index.json")) {
    read_index(file, store);
  } else if (ends_with(fname, ".h5")) {
    read_tf_h5(file, store);
  } else {
    read_weights_file(file, store);
  }
  return store;
}

const TensorView* WeightStore::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> WeightStore::names() const {
  std::vector<std::string> out;
  out.reserve(tensors_.size());
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

size_t WeightStore::total_bytes() const {
  size_t total = 0;
  for (const auto& [k, v] : tensors_) total += v.nbytes;
  return total;
}

void WeightStore::add(TensorView t) {
  const std::string stored = t.name;
  t.name = canonical_name(stored);
  auto it = tensors_.find(t.name);
  if (it != tensors_.end()) {
    std::string problem = "tensor '" + t.name + "'";
    if (stored != t.name) problem += " (stored as '" + stored + "')";
    problem += " appears more than once";
    if (it->second.file != t.file) problem += " (also in " + it->second.file + ")";
    throw InputError(t.file, problem);
  }
  tensors_.emplace(t.name, std::move(t));
}

void WeightStore::keep(std::shared_ptr<MappedFile> f) { mapped_.push_back(std::move(f)); }

const std::byte* WeightStore::own(std::vector<std::byte> bytes) {
  owned_.push_back(std::make_unique<std::vector<std::byte>>(std::move(bytes)));
  return owned_.back()->data();
}

bool parse_framework(const std::string& s, Framework* out) {
  if (s == "auto") *out = Framework::kAuto;
  else if (s == "pt" || s == "pytorch") *out = Framework::kPyTorch;
  else if (s == "tf" || s == "tensorflow") *out = Framework::kTensorFlow;
  else return false;
  return true;
}

WeightStore open_checkpoint_weights(const fs::path& dir, Framework framework) {
  const std::string d = dir.string();
  std::error_code ec;
  if (!fs::exists(dir, ec)) throw InputError(d, "checkpoint folder not found");
  if (!fs::is_directory(dir, ec)) throw InputError(d, "not a directory");
  // fs::exists follows symlinks: a dangling tf_model.h5 link still counts as there (and fails when opened).
  auto present = [&](const fs::path& p) { return fs::exists(p, ec) || fs::is_symlink(p, ec); };
  const fs::path h5 = dir / kTfWeightsFile;
  if (framework != Framework::kTensorFlow) {
    for (const char* name : {"model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                             "pytorch_model.bin.index.json"}) {
      const fs::path p = dir / name;
      if (fs::exists(p, ec)) return WeightStore::open_file(p);
    }
  }
  if (framework != Framework::kPyTorch && present(h5)) return WeightStore::open_file(h5);
  if (framework == Framework::kTensorFlow) {
    throw InputError(d, std::string("no TensorFlow weights found (--framework tf reads ") + kTfWeightsFile + ")");
  }
  if (framework == Framework::kPyTorch && present(h5)) {
    throw InputError(d, std::string("no PyTorch weights found (expected model.safetensors, pytorch_model.bin or their "
                                    "shard indexes); the folder has ") + kTfWeightsFile + ": use --framework tf or auto");
  }
  throw InputError(d, "no weights found (expected model.safetensors, model.safetensors.index.json, pytorch_model.bin, "
                      "pytorch_model.bin.index.json or tf_model.h5)");
}

}  // namespace trex
