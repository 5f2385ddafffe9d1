// An ONNX model held as its protobuf structure plus a separate table of initializers whose bytes are
// produced lazily (see TensorData). The protobuf graph never holds weight bytes, so models far above
// protobuf's 2 GB limit are handled like small ones.
#pragma once

#include <string>
#include <vector>

#include "graph/tensor_data.h"
#include "onnx/onnx.pb.h"

namespace trex {

struct Initializer {
  std::string name;
  TensorData data;
};

struct Model {
  onnx::ModelProto proto;  // graph without initializers
  std::vector<Initializer> initializers;

  size_t weight_bytes() const {
    size_t n = 0;
    for (const auto& i : initializers) n += i.data.nbytes();
    return n;
  }
};

// ONNX TensorProto element type for a trex DType.
int onnx_elem_type(DType t);

}  // namespace trex
