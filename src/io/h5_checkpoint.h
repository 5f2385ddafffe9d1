// Reader for TensorFlow checkpoints written by transformers' TF classes (`save_pretrained` → tf_model.h5, the
// Keras HDF5 weights format), through the HDF5 C library.
//
// Layout read: the root attribute `layer_names` lists the top-level Keras layers; each layer's group has a
// `weight_names` attribute (split into `weight_names0`, `weight_names1`, ... when large) listing its variables by
// their TF names ("tf_bert_model/bert/encoder/layer_._0/attention/self/query/kernel:0"); each variable is the
// dataset at that path below the layer's group.
//
// Tensors are given under the names PyTorch uses for the same weights (the state_dict names transformers gives them
// when it loads TF weights into a PyTorch model), so that the architecture builders read them as they read
// safetensors: the outer model scope is dropped, `_._` separates list items, `outer___inner` keeps `inner`,
// Dense kernels become transposed `weight`s ([in, out] → [out, in]), `gamma`/`beta` become `weight`/`bias`,
// `embeddings` becomes `weight`, and a [1, n] bias (TF's Conv1D) becomes [n]. The bytes are copied into memory
// owned by the WeightStore (f32, f16, bf16 and f64 as stored; other types are refused).
//
// Confinement: the file is opened through io/safe_open (a regular file inside the checkpoint folder, symlinks
// resolved) and HDF5 is given that descriptor (/proc/self/fd/N), never the path. Sizes are checked before reading:
// a dataset's stored bytes must equal its shape times its element size (no compressed or unwritten datasets), so
// nothing read can be larger than the file. HDF5 parses the file in a child process (it can loop forever or crash on
// corrupt files): the tensors come back through a memory file; a child that does not finish before a deadline
// (60 s + 1 s per 16 MiB; $TREX_H5_TIMEOUT_S) is killed, and a hang or crash is an InputError naming the file.
#pragma once

#include <filesystem>
#include <string>

namespace trex {

class WeightStore;

inline constexpr const char* kTfWeightsFile = "tf_model.h5";

// The PyTorch state_dict name of a Keras variable name; `rank` is the variable's rank. Sets *transpose when the
// tensor is a Dense kernel stored as [in, out]. Returns "" when the name has no component left.
std::string keras_to_pytorch_name(const std::string& keras_name, int rank, bool* transpose);

// Reads `path` (tf_model.h5) and adds its tensors to `store` under their PyTorch names.
// Throws InputError("<file>: <problem>") naming the layer / dataset concerned.
void read_tf_h5(const std::filesystem::path& path, WeightStore& store);

}  // namespace trex
