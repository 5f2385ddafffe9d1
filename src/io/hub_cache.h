// Where a --model argument points: a checkpoint folder, a Hugging Face cache repo folder (models--ORG--NAME),
// or a hub id (ORG/NAME) resolved in the local Hugging Face cache exactly as huggingface_hub lays it out:
//   $HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub
//     models--ORG--NAME/refs/<revision>      (a file holding the commit hash)
//     models--ORG--NAME/snapshots/<hash>/...  (the files, usually symlinks into ../../blobs/)
// Offline first: a hub id whose revision is in the cache is used as it is. Otherwise it is downloaded
// (io/hub_download.h) unless HF_HUB_OFFLINE=1, where a missing model is an InputError naming the id and the
// cache folder searched.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <string>

#include "io/checkpoint_weights.h"

namespace trex {

// The Hugging Face hub cache folder from the environment.
std::filesystem::path hub_cache_dir();

// Resolves `model` (a folder, a cache repo folder, or ORG/NAME) at `revision` (a branch/tag name in refs/, or a
// commit hash; default "main") to the snapshot folder holding config.json. Throws InputError.
// `progress` (may be empty) sees downloads: (file, bytes done, bytes total).
// `framework` kTensorFlow: a download fetches tf_model.h5 (not the PyTorch weights), and a cached snapshot without
// it is downloaded again (online).
std::filesystem::path resolve_model_dir(
    const std::string& model, const std::string& revision = "",
    const std::function<void(const std::string&, uint64_t, uint64_t)>& progress = {},
    Framework framework = Framework::kAuto);

}  // namespace trex
