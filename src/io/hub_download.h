// Downloads a model's files from the Hugging Face hub (or any server with its resolve URLs) into the local
// cache, in huggingface_hub's layout, so Python tools and trex share one cache:
//   blobs/<etag>                 the bytes (LFS files: etag = sha256, checked after download)
//   blobs/<etag>.incomplete      a partial download, resumed with an HTTP Range request next time
//   snapshots/<commit>/<file>    relative symlink to ../../blobs/<etag>
//   refs/<revision>              the commit the revision resolved to
// Files fetched: config.json (required), the weights (safetensors, else pytorch_model.bin; single or sharded by
// their index; else, or with framework kTensorFlow, tf_model.h5), generation_config.json and the tokenizer files, each only when the server has it.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "io/checkpoint_weights.h"

namespace trex {

struct HubDownloadOptions {
  std::string endpoint;   // default: $HF_ENDPOINT, else https://huggingface.co
  std::string token;      // default: $HF_TOKEN (sent as a Bearer token)
  std::filesystem::path cache;  // default: hub_cache_dir()
  long timeout_s = 60;    // per request without progress
  // Weights fetched: kAuto and kPyTorch the PyTorch ones (kAuto falls back to tf_model.h5 when the model has none),
  // kTensorFlow tf_model.h5.
  Framework framework = Framework::kAuto;
  // (file name, bytes done, bytes total; total 0 when unknown).
  std::function<void(const std::string&, uint64_t, uint64_t)> progress;
};

// Downloads (or finds complete in the cache) `repo_id` at `revision` and returns the snapshot folder.
// Throws InputError naming the id/URL and the problem (HTTP status, 401/403 access, checksum mismatch, network).
std::filesystem::path download_model(const std::string& repo_id, const std::string& revision,
                                     const HubDownloadOptions& options = {});

}  // namespace trex
