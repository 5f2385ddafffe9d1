// Reads an ONNX model file into a Model: the protobuf structure without initializer bytes, and one TensorData
// per top-level initializer. The file is memory-mapped; raw_data initializers are zero-copy views into the
// mapping, external-data initializers are views into the mapped .data file(s), and typed fields
// (float_data, int64_data, ...) are converted into owned bytes. Initializers of element types trex has no
// DType for (strings, uint16/32/64, complex, float8, int4, ...) stay inside the proto graph untouched.
#pragma once

#include <filesystem>

#include "graph/model.h"

namespace trex {

// Throws InputError naming the file on anything unreadable: missing/unparsable file, a single file above
// protobuf's 2 GB limit, external data that is missing, outside the model folder or out of bounds.
Model read_model(const std::filesystem::path& path);

// DType for an ONNX TensorProto element type; false when trex has none.
bool dtype_from_onnx(int elem_type, DType* out);

}  // namespace trex
