// The bytes behind one ONNX initializer, produced only when the model is written, so a large
// model is streamed from the memory-mapped checkpoint to the output file without a second copy.
#pragma once

#include <cstddef>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "io/tensor.h"

namespace trex {

class TensorData {
 public:
  TensorData() = default;
  // Bytes that live elsewhere (a mapped checkpoint) for at least as long as the model; already in the target
  // dtype and layout. `keep_alive` (optional) holds whatever owns them.
  static TensorData view(DType dtype, Shape dims, const std::byte* bytes, std::shared_ptr<const void> keep_alive = {});
  // Bytes owned by this object (small constants, converted tensors).
  static TensorData owned(DType dtype, Shape dims, std::vector<std::byte> bytes);
  // Bytes computed on demand into a caller-provided buffer of nbytes() (transposes, dtype conversions).
  static TensorData produced(DType dtype, Shape dims, std::function<void(std::byte* dst)> produce);

  template <typename T>
  static TensorData from_vector(DType dtype, Shape dims, const std::vector<T>& values) {
    std::vector<std::byte> b(values.size() * sizeof(T));
    if (!b.empty()) std::memcpy(b.data(), values.data(), b.size());
    return owned(dtype, std::move(dims), std::move(b));
  }

  DType dtype() const { return dtype_; }
  const Shape& dims() const { return dims_; }
  size_t nbytes() const;

  // A pointer to the bytes when they are already materialized (view/owned), else nullptr.
  const std::byte* direct() const;
  // Writes nbytes() bytes to dst.
  void copy_to(std::byte* dst) const;
  // Materializes into a vector (for small tensors, passes and tests).
  std::vector<std::byte> to_bytes() const;

  // The memory-mapped checkpoint bytes this tensor is made from (a view's own bytes count without this).
  TensorData& with_source(const std::byte* bytes, size_t n);
  // The sources of `other` (its mapped bytes, a view's own included) become sources of this tensor (a tensor
  // computed from `other`, e.g. its quantized codes).
  TensorData& with_sources_of(const TensorData& other);
  // Tells the kernel the mapped source pages are not needed any more (after the tensor was written), so the
  // export's resident memory stays near one tensor instead of growing with the checkpoint. The pages stay in
  // the page cache: touching them again costs a minor fault, never wrong data.
  void release_sources() const;

  // Float rows in the mapped checkpoint (f32 / f16 / bf16 TensorViews, each [rows, cols], read in order) that
  // hold this tensor's values, so that a consumer can read them a row at a time instead of materializing the
  // whole tensor. `transposed` false: the rows of this [R, C] tensor; true: the rows of its transpose (a K×N
  // `<name>.T` MatMul weight whose checkpoint rows [N, K] are its columns; a packed QKV weight's parts).
  struct RawRows {
    std::vector<TensorView> parts;
    bool transposed = false;
  };
  TensorData& with_raw_rows(RawRows rows);
  // nullptr when this tensor has no raw rows.
  const RawRows* raw_rows() const { return raw_rows_ ? raw_rows_.get() : nullptr; }

 private:
  DType dtype_ = DType::kF32;
  Shape dims_;
  const std::byte* view_ = nullptr;
  std::shared_ptr<const void> keep_alive_;
  std::shared_ptr<const std::vector<std::byte>> owned_;
  std::function<void(std::byte*)> produce_;
  std::vector<std::pair<const std::byte*, size_t>> sources_;
  std::shared_ptr<const RawRows> raw_rows_;
};

}  // namespace trex
