#include "graph/tensor_data.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>

#include "util/error.h"

namespace trex {

TensorData TensorData::view(DType dtype, Shape dims, const std::byte* bytes, std::shared_ptr<const void> keep_alive) {
  TensorData t;
  t.dtype_ = dtype;
  t.dims_ = std::move(dims);
  t.view_ = bytes;
  t.keep_alive_ = std::move(keep_alive);
  return t;
}

TensorData TensorData::owned(DType dtype, Shape dims, std::vector<std::byte> bytes) {
  TensorData t;
  t.dtype_ = dtype;
  t.dims_ = std::move(dims);
  t.owned_ = std::make_shared<const std::vector<std::byte>>(std::move(bytes));
  if (t.owned_->size() != t.nbytes()) throw std::logic_error("TensorData::owned: byte count does not match shape");
  return t;
}

TensorData TensorData::produced(DType dtype, Shape dims, std::function<void(std::byte*)> produce) {
  TensorData t;
  t.dtype_ = dtype;
  t.dims_ = std::move(dims);
  t.produce_ = std::move(produce);
  return t;
}

size_t TensorData::nbytes() const {
  size_t n = 0;
  // Checked: a hostile shape such as [2^56, 64] must not wrap to a small byte count.
  if (__builtin_mul_overflow(static_cast<size_t>(num_elements(dims_)), dtype_size(dtype_), &n))
    throw InputError("shape " + shape_str(dims_) + " of " + std::string(dtype_name(dtype_)) + " has too many bytes");
  return n;
}

const std::byte* TensorData::direct() const {
  if (view_) return view_;
  if (owned_) return owned_->data();
  return nullptr;
}

void TensorData::copy_to(std::byte* dst) const {
  const size_t n = nbytes();
  if (n == 0) return;
  if (const std::byte* p = direct()) {
    std::memcpy(dst, p, n);
  } else if (produce_) {
    produce_(dst);
  } else {
    throw std::logic_error("TensorData has no bytes");
  }
}

TensorData& TensorData::with_source(const std::byte* bytes, size_t n) {
  sources_.emplace_back(bytes, n);
  return *this;
}

TensorData& TensorData::with_sources_of(const TensorData& other) {
  sources_.insert(sources_.end(), other.sources_.begin(), other.sources_.end());
  if (other.view_) sources_.emplace_back(other.view_, other.nbytes());
  return *this;
}

TensorData& TensorData::with_raw_rows(RawRows rows) {
  raw_rows_ = std::make_shared<const RawRows>(std::move(rows));
  return *this;
}

void TensorData::release_sources() const {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  std::vector<std::pair<const std::byte*, size_t>> all = sources_;
  if (view_) all.emplace_back(view_, nbytes());  // a view's own bytes are its source
  for (const auto& [p, n] : all) {
    // Only whole pages inside the range: the neighbours' bytes may still be needed.
    const uintptr_t begin = (reinterpret_cast<uintptr_t>(p) + page - 1) & ~(page - 1);
    const uintptr_t end = (reinterpret_cast<uintptr_t>(p) + n) & ~(page - 1);
    if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
  }
}

std::vector<std::byte> TensorData::to_bytes() const {
  std::vector<std::byte> out(nbytes());
  copy_to(out.data());
  return out;
}

}  // namespace trex
