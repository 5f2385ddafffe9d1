// Reads an ONNX model file into a Model: the protobuf structure without initializer bytes, and one TensorData
// per top-level initializer. The file is memory-mapped; raw_data initializers are zero-copy views into the
// mapping, external-data initializers are views into the mapped .data file(s), and typed fields
// (float_data, int64_data, ...) are converted into owned bytes. Initializers of element types trex has no
// DType for (strings, uint16/32/64, complex, float8, int4, ...) stay inside the proto graph untouched.
#pragma once

#include <filesystem>
#include <string>

#include "graph/model.h"

namespace trex {

// Throws InputError naming the file on anything unreadable: missing/unparsable file, a single file above
// protobuf's 2 GB limit, external data that is missing, outside the model folder or out of bounds.
Model read_model(const std::filesystem::path& path);

// Checks every external-data location in the model file (initializers of the main graph and of subgraphs,
// tensor attributes, sparse tensors, functions) without loading any weight: each must be relative, without
// `..`, and inside the model's folder after symlinks are resolved. Call it before handing a model path to
// ONNX Runtime, which would otherwise open whatever the locations name. Throws InputError naming the model
// file, the tensor and the location.
void validate_external_data(const std::filesystem::path& model_path);

// The check above for one location of tensor `tensor` in `model_file`, whose folder is `model_dir`.
void check_external_location(const std::string& model_file, const std::filesystem::path& model_dir,
                             const std::string& tensor, const std::string& location);

// DType for an ONNX TensorProto element type; false when trex has none.
bool dtype_from_onnx(int elem_type, DType* out);

}  // namespace trex
