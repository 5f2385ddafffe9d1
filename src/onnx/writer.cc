#include "onnx/writer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <mutex>
#include <thread>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "util/error.h"
#include "util/output_path.h"

namespace trex {
namespace {

namespace fs = std::filesystem;

// Buffered writer on a POSIX file descriptor (positioned writes); errors become OutputError naming the final path.
// `direct`: large page-aligned writes go to the disk with O_DIRECT (no copy into the page cache, no dirty-page
// throttling: on this project's VM, 1.2-2.0 GB/s against 0.3-0.5 GB/s buffered); everything else goes through an
// aligned buffer written in whole 4 KiB blocks, and the last partial block is written buffered at close. Where the
// file system refuses O_DIRECT the sink stays (or falls back to) buffered. TREX_DIRECT_IO=0 turns it off.
// write_async: a large tensor is written by a background thread while the caller produces the next one.
class FileSink {
 public:
  FileSink(const fs::path& tmp, const fs::path& shown, bool direct = false) : shown_(shown.string()) {
    fd_ = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd_ < 0) throw OutputError(shown_, std::string("cannot write: ") + std::strerror(errno));
    for (char*& b : bufs_) {
      b = static_cast<char*>(std::aligned_alloc(kAlign, kBufSize));
      if (!b) throw std::bad_alloc();
    }
    buf_ = bufs_[0];
#ifdef O_DIRECT
    const char* env = std::getenv("TREX_DIRECT_IO");
    if (direct && !(env && std::string(env) == "0")) {
      const int flags = ::fcntl(fd_, F_GETFL);
      direct_ = flags >= 0 && ::fcntl(fd_, F_SETFL, flags | O_DIRECT) == 0;
    }
#else
    (void)direct;
#endif
  }
  FileSink(const FileSink&) = delete;
  FileSink& operator=(const FileSink&) = delete;
  ~FileSink() {
    stop_worker();
    if (fd_ >= 0) ::close(fd_);
    for (char* b : bufs_) std::free(b);
  }
  void write(const void* data, size_t n) { put(static_cast<const char*>(data), n, false); }
  // As write, but the large aligned part may be written by a background thread: `data` must stay unchanged until
  // the next write_async returns (it waits for this one) or close().
  void write_async(const void* data, size_t n) {
    wait_async();
    put(static_cast<const char*>(data), n, true);
  }
  void pad_to(size_t alignment) {
    static const char zeros[4096] = {};
    while (offset() % alignment) write(zeros, std::min<size_t>(alignment - offset() % alignment, sizeof(zeros)));
  }
  size_t offset() const { return written_ + len_; }
  // Buffered writes from now on (the pending ones finished first).
  void use_page_cache() {
    wait_async();
    flush();
    set_buffered();
  }
  void close() {
    wait_async();
    stop_worker();
    flush();
    if (len_ > 0) {  // direct: the last partial block, written buffered
      set_buffered();
      flush();
    }
    if (::close(fd_) != 0) {
      fd_ = -1;
      throw OutputError(shown_, std::string("cannot write: ") + std::strerror(errno));
    }
    fd_ = -1;
  }

 private:
  static constexpr size_t kBufSize = 4 << 20, kAlign = 4096, kDirectMin = 1 << 16;
  void put(const char* p, size_t n, bool async) {
    // Large writes skip the buffer: aligned ones straight to the disk when direct, all of them when buffered.
    if (n >= kDirectMin && (!direct_ || (reinterpret_cast<uintptr_t>(p) % kAlign == 0 && len_ % kAlign == 0))) {
      flush();  // all of it: in direct mode len_ is whole blocks here
      const size_t m = direct_ ? n / kAlign * kAlign : n;
      if (async) {
        submit(p, m, written_);
      } else {
        raw_write(p, m, written_);
      }
      written_ += m;
      p += m;
      n -= m;
    }
    while (n > 0) {
      const size_t c = std::min(n, kBufSize - len_);
      std::memcpy(buf_ + len_, p, c);
      len_ += c;
      p += c;
      n -= c;
      if (len_ == kBufSize) {  // a full buffer goes to the background writer; filling goes on in the other one
        wait_async();
        submit(buf_, len_, written_);
        written_ += len_;
        len_ = 0;
        buf_ = buf_ == bufs_[0] ? bufs_[1] : bufs_[0];
      }
    }
  }
  // Writes the buffer (direct: its whole blocks, the rest moved to the front).
  void flush() {
    const size_t m = direct_ ? len_ / kAlign * kAlign : len_;
    if (m == 0) return;
    raw_write(buf_, m, written_);
    written_ += m;
    std::memmove(buf_, buf_ + m, len_ - m);
    len_ -= m;
  }
  void set_buffered() {
    direct_ = false;
    drop_direct_flag();
  }
  // Clears O_DIRECT on the descriptor (both threads' later writes are then buffered, at any alignment).
  void drop_direct_flag() {
#ifdef O_DIRECT
    const int flags = ::fcntl(fd_, F_GETFL);
    if (flags >= 0 && (flags & O_DIRECT)) ::fcntl(fd_, F_SETFL, flags & ~O_DIRECT);
#endif
  }
  // pwrite until done; errno of a failure, 0 on success. EINVAL under O_DIRECT (a file system that takes the flag
  // but not the write, or a short write that broke the alignment): retried buffered.
  int pwrite_all(const char* p, size_t n, size_t at) {
    bool retried = false;
    while (n > 0) {
      ssize_t w = ::pwrite(fd_, p, std::min<size_t>(n, size_t{1} << 30), static_cast<off_t>(at));
      if (w < 0) {
        if (errno == EINTR) continue;
        if (errno == EINVAL && !retried) {
          retried = true;
          drop_direct_flag();
          continue;
        }
        return errno;
      }
      p += w;
      n -= static_cast<size_t>(w);
      at += static_cast<size_t>(w);
    }
    return 0;
  }
  void raw_write(const char* p, size_t n, size_t at) {
    if (const int e = pwrite_all(p, n, at)) throw OutputError(shown_, std::string("cannot write: ") + std::strerror(e));
  }
  // The background writer: one job at a time.
  void submit(const char* p, size_t n, size_t at) {
    std::unique_lock<std::mutex> lock(mu_);
    if (!worker_.joinable()) worker_ = std::thread([this] { work(); });
    job_ = {p, n, at};
    busy_ = true;
    cv_.notify_all();
  }
  void work() {
    std::unique_lock<std::mutex> lock(mu_);
    for (;;) {
      cv_.wait(lock, [this] { return busy_ || quit_; });
      if (busy_) {
        const Job j = job_;
        lock.unlock();
        const int e = pwrite_all(j.p, j.n, j.at);
        lock.lock();
        if (e && !error_) error_ = e;
        busy_ = false;
        cv_.notify_all();
      } else if (quit_) {
        return;
      }
    }
  }
  void wait_async() {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return !busy_; });
    if (error_) {
      const int e = error_;
      error_ = 0;
      throw OutputError(shown_, std::string("cannot write: ") + std::strerror(e));
    }
  }
  void stop_worker() {
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (!worker_.joinable()) return;
      cv_.wait(lock, [this] { return !busy_; });
      quit_ = true;
      cv_.notify_all();
    }
    worker_.join();
  }
  struct Job {
    const char* p = nullptr;
    size_t n = 0, at = 0;
  };
  int fd_ = -1;
  std::string shown_;
  char* bufs_[2] = {nullptr, nullptr};
  char* buf_ = nullptr;  // the one being filled; the other may be in the background writer's hands
  size_t len_ = 0;
  size_t written_ = 0;
  bool direct_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::thread worker_;
  Job job_;
  bool busy_ = false, quit_ = false;
  int error_ = 0;
};

// One reusable buffer for produced tensors: mapped once (2 MB pages where the kernel gives them) and grown
// when a larger tensor comes, so tensors after the first cost no page faults or zeroing, and the TLB covers it.
class Scratch {
 public:
  Scratch() = default;
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  ~Scratch() {
    if (p_) ::munmap(p_, cap_);
  }
  std::byte* get(size_t n) {
    if (n <= cap_) return static_cast<std::byte*>(p_);
    if (p_) ::munmap(p_, cap_);
    p_ = nullptr;
    cap_ = 0;
    constexpr size_t kHuge = size_t{2} << 20;
    const size_t cap = (n + kHuge - 1) / kHuge * kHuge;
    void* p = ::mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
#ifdef MADV_HUGEPAGE
    ::madvise(p, cap, MADV_HUGEPAGE);
#endif
    p_ = p;
    cap_ = cap;
    return static_cast<std::byte*>(p_);
  }

 private:
  void* p_ = nullptr;
  size_t cap_ = 0;
};

// Removes temporary files unless committed.
class TempFiles {
 public:
  void add(const fs::path& p) { paths_.push_back(p); }
  void commit() { paths_.clear(); }
  ~TempFiles() {
    std::error_code ec;
    for (const auto& p : paths_) fs::remove(p, ec);
  }

 private:
  std::vector<fs::path> paths_;
};

void put_varint(std::string& s, uint64_t v) {
  while (v >= 0x80) {
    s.push_back(static_cast<char>((v & 0x7F) | 0x80));
    v >>= 7;
  }
  s.push_back(static_cast<char>(v));
}
size_t varint_size(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) {
    v >>= 7;
    ++n;
  }
  return n;
}

// Protobuf wire tags (field_number << 3 | wire type 2 = length-delimited).
constexpr uint8_t kModelGraphTag = (7 << 3) | 2;        // ModelProto.graph
constexpr uint8_t kGraphInitializerTag = (5 << 3) | 2;  // GraphProto.initializer
constexpr uint8_t kTensorRawDataTag = (9 << 3) | 2;     // TensorProto.raw_data

onnx::TensorProto tensor_header(const Initializer& init) {
  onnx::TensorProto t;
  t.set_name(init.name);
  for (auto d : init.data.dims()) t.add_dims(d);
  t.set_data_type(onnx_elem_type(init.data.dtype()));
  return t;
}


// Throws when a floating initializer holds NaN/Inf (see WriteOptions::allow_nonfinite).
void check_finite(const Initializer& init, const std::byte* p, size_t n, const WriteOptions& o) {
  if (o.allow_nonfinite || n <= dtype_size(init.data.dtype())) return;
  const int64_t bad = first_nonfinite(init.data.dtype(), p, n);
  if (bad < 0) return;
  const std::string problem = "tensor '" + (init.name.size() > 200 ? init.name.substr(0, 200) + "..." : init.name) +
                              "' holds NaN or infinity (element " + std::to_string(bad) +
                              "); refused unless --allow-nonfinite is given";
  if (o.source_for_messages.empty()) throw InputError(problem);
  throw InputError(o.source_for_messages, problem);
}

// Scratch buffers for a writer that overlaps producing a tensor with writing the previous one: two that take
// turns for tensors up to kAsyncMax (written in the background), one for larger ones (written before the next is
// produced), so the memory is that of the largest tensor plus two of the usual size, not twice the largest.
class TensorBuffers {
 public:
  static constexpr size_t kAsyncMax = size_t{64} << 20;
  // A buffer for n bytes; *async tells whether it may be handed to FileSink::write_async.
  std::byte* get(size_t n, bool* async) {
    *async = n <= kAsyncMax;
    if (!*async) return big_.get(n);
    turn_ ^= 1;
    return small_[turn_].get(n);
  }

 private:
  Scratch big_, small_[2];
  int turn_ = 0;
};

// Writes one initializer's bytes: a view as it is, a produced tensor through `buffers` (checked for NaN/inf first).
void write_tensor(FileSink& sink, TensorBuffers& buffers, const Initializer& init, const WriteOptions& options) {
  const size_t n = init.data.nbytes();
  if (const std::byte* p = init.data.direct()) {
    check_finite(init, p, n, options);
    sink.write(p, n);
    return;
  }
  bool async = false;
  std::byte* buf = buffers.get(n, &async);
  init.data.copy_to(buf);
  check_finite(init, buf, n, options);
  if (async)
    sink.write_async(buf, n);
  else
    sink.write(buf, n);
}

template <typename Bits>
int64_t first_nonfinite_bits(const std::byte* data, size_t count, Bits exp_mask) {
  // Branch-free count per block (vectorizes), exact position only when a block has one.
  constexpr size_t kBlock = 1024;
  for (size_t b = 0; b < count; b += kBlock) {
    const size_t e = std::min(count, b + kBlock);
    size_t hits = 0;
    for (size_t i = b; i < e; ++i) {
      Bits v;
      std::memcpy(&v, data + i * sizeof(Bits), sizeof(Bits));
      hits += (v & exp_mask) == exp_mask;
    }
    if (hits == 0) continue;
    for (size_t i = b; i < e; ++i) {
      Bits v;
      std::memcpy(&v, data + i * sizeof(Bits), sizeof(Bits));
      if ((v & exp_mask) == exp_mask) return static_cast<int64_t>(i);
    }
  }
  return -1;
}

}  // namespace

int64_t first_nonfinite(DType dtype, const std::byte* data, size_t n) {
  switch (dtype) {
    case DType::kF32: return first_nonfinite_bits<uint32_t>(data, n / 4, 0x7F800000u);
    case DType::kF64: return first_nonfinite_bits<uint64_t>(data, n / 8, 0x7FF0000000000000ull);
    case DType::kF16: return first_nonfinite_bits<uint16_t>(data, n / 2, uint16_t{0x7C00});
    case DType::kBF16: return first_nonfinite_bits<uint16_t>(data, n / 2, uint16_t{0x7F80});
    default: return -1;
  }
}

void check_initializers_finite(const Model& model, const std::string& source) {
  WriteOptions o;
  o.source_for_messages = source;
  Scratch scratch;
  for (const auto& init : model.initializers) {
    const DType t = init.data.dtype();
    if (t != DType::kF32 && t != DType::kF16 && t != DType::kBF16 && t != DType::kF64) continue;
    const size_t n = init.data.nbytes();
    if (const std::byte* p = init.data.direct()) {
      check_finite(init, p, n, o);
    } else {
      std::byte* buf = scratch.get(n);
      init.data.copy_to(buf);
      check_finite(init, buf, n, o);
    }
  }
}

struct SharedExternalData::Impl {
  fs::path tmp;
  TensorBuffers buffers;  // before the sink: destroyed after it, when its background write has finished
  FileSink sink;
  std::map<std::string, std::pair<size_t, size_t>> placed;
  bool committed = false;
  Impl(const fs::path& t, const fs::path& shown) : tmp(t), sink(t, shown, /*direct=*/true) {}
};

SharedExternalData::SharedExternalData(fs::path path) : path_(std::move(path)) {
  check_output_path(path_);
  impl_ = std::make_unique<Impl>(temp_path_beside(path_), path_);
}

void SharedExternalData::use_page_cache() { impl_->sink.use_page_cache(); }

SharedExternalData::~SharedExternalData() {
  if (impl_ && !impl_->committed) {
    std::error_code ec;
    fs::remove(impl_->tmp, ec);
  }
}

size_t SharedExternalData::bytes() const { return impl_->sink.offset(); }

SharedExternalData::Place SharedExternalData::place(const std::string& key, const Initializer& init,
                                                    const WriteOptions& options) {
  auto it = impl_->placed.find(key);
  if (it != impl_->placed.end()) return {it->second.first, it->second.second, false};
  const size_t n = init.data.nbytes();
  FileSink& data = impl_->sink;
  data.pad_to(n >= (size_t{1} << 20) ? 4096 : 64);
  const size_t offset = data.offset();
  write_tensor(data, impl_->buffers, init, options);
  init.data.release_sources();
  impl_->placed[key] = {offset, n};
  return {offset, n, true};
}

void SharedExternalData::commit() {
  impl_->sink.close();
  std::error_code ec;
  fs::rename(impl_->tmp, path_, ec);
  if (ec) throw OutputError(path_.string(), "cannot write: " + ec.message());
  impl_->committed = true;
}

fs::path external_data_path(const fs::path& model_path) {
  return model_path.parent_path() / (model_path.filename().string() + ".data");
}

WriteResult write_model(const Model& model, const fs::path& path, const WriteOptions& options) {
  check_output_path(path);

  // Decide where each initializer goes.
  size_t total_weights = model.weight_bytes();
  onnx::ModelProto head = model.proto;
  onnx::GraphProto graph = head.graph();
  head.clear_graph();
  const size_t structure_bytes = head.ByteSizeLong() + graph.ByteSizeLong() + 64 * model.initializers.size();
  bool external = options.external == ExternalData::kAlways ||
                  (options.external == ExternalData::kAuto && structure_bytes + total_weights > options.single_file_limit);
  if (options.external == ExternalData::kNever && structure_bytes + total_weights > options.single_file_limit)
    throw UsageError(path.string() + ": the model needs " + std::to_string(total_weights >> 20) +
                     " MiB of weights, above protobuf's 2 GB limit for one file; use --external-data auto or always");

  TempFiles temps;
  WriteResult result;
  result.model_path = path;

  // External data first: tensors go to <model>.data (or the shared file), headers point at their offsets.
  std::vector<onnx::TensorProto> headers;
  headers.reserve(model.initializers.size());
  std::vector<bool> inline_data(model.initializers.size(), true);
  size_t done = 0;
  auto point_at = [&](onnx::TensorProto& h, const fs::path& file, size_t offset, size_t n) {
    h.set_data_location(onnx::TensorProto::EXTERNAL);
    auto add_kv = [&](const std::string& k, const std::string& v) {
      auto* e = h.add_external_data();
      e->set_key(k);
      e->set_value(v);
    };
    add_kv("location", file.filename().string());
    add_kv("offset", std::to_string(offset));
    add_kv("length", std::to_string(n));
  };
  if (options.shared) {
    external = true;
    result.data_path = options.shared->path();
    for (size_t i = 0; i < model.initializers.size(); ++i) {
      const auto& init = model.initializers[i];
      headers.push_back(tensor_header(init));
      const size_t n = init.data.nbytes();
      if (n < options.external_min_bytes) continue;
      inline_data[i] = false;
      std::string key = init.name;
      key += '|';
      key += std::to_string(static_cast<int>(init.data.dtype()));
      for (auto d : init.data.dims()) {
        key += ',';
        key += std::to_string(d);
      }
      const SharedExternalData::Place at = options.shared->place(key, init, options);
      if (at.written_now) result.data_bytes += n;
      point_at(headers.back(), result.data_path, at.offset, n);
      done += n;
      if (options.progress) options.progress(done, total_weights);
    }
  } else if (external) {
    result.data_path = external_data_path(path);
    const fs::path tmp = temp_path_beside(result.data_path);
    temps.add(tmp);
    TensorBuffers buffers;  // declared first, destroyed last: a background write may read it until the sink ends
    FileSink data(tmp, result.data_path, options.direct_io);
    for (size_t i = 0; i < model.initializers.size(); ++i) {
      const auto& init = model.initializers[i];
      headers.push_back(tensor_header(init));
      const size_t n = init.data.nbytes();
      if (n < options.external_min_bytes) continue;
      inline_data[i] = false;
      data.pad_to(n >= (size_t{1} << 20) ? 4096 : 64);  // page-aligned big tensors can be memory-mapped by runtimes
      const size_t offset = data.offset();
      write_tensor(data, buffers, init, options);
      point_at(headers.back(), result.data_path, offset, n);
      init.data.release_sources();
      done += n;
      if (options.progress) options.progress(done, total_weights);
    }
    data.close();
    result.data_bytes = data.offset();
  } else {
    for (const auto& init : model.initializers) headers.push_back(tensor_header(init));
  }

  // Compute the GraphProto length: structure + each initializer record.
  std::string graph_bytes = graph.SerializeAsString();
  std::vector<std::string> header_bytes(headers.size());
  size_t graph_len = graph_bytes.size();
  for (size_t i = 0; i < headers.size(); ++i) {
    header_bytes[i] = headers[i].SerializeAsString();
    size_t tensor_len = header_bytes[i].size();
    if (inline_data[i]) {
      const size_t n = model.initializers[i].data.nbytes();
      tensor_len += 1 + varint_size(n) + n;
    }
    graph_len += 1 + varint_size(tensor_len) + tensor_len;
  }

  const fs::path tmp = temp_path_beside(path);
  temps.add(tmp);
  TensorBuffers buffers;  // outlives the sink's background writes
  FileSink out(tmp, path, options.direct_io);
  std::string prefix = head.SerializeAsString();
  prefix.push_back(static_cast<char>(kModelGraphTag));
  put_varint(prefix, graph_len);
  prefix += graph_bytes;
  out.write(prefix.data(), prefix.size());
  for (size_t i = 0; i < headers.size(); ++i) {
    const auto& init = model.initializers[i];
    const size_t n = init.data.nbytes();
    size_t tensor_len = header_bytes[i].size() + (inline_data[i] ? 1 + varint_size(n) + n : 0);
    std::string rec;
    rec.push_back(static_cast<char>(kGraphInitializerTag));
    put_varint(rec, tensor_len);
    rec += header_bytes[i];
    if (inline_data[i]) {
      rec.push_back(static_cast<char>(kTensorRawDataTag));
      put_varint(rec, n);
    }
    out.write(rec.data(), rec.size());
    if (!inline_data[i]) continue;
    write_tensor(out, buffers, init, options);
    init.data.release_sources();
    if (!external) {
      done += n;
      if (options.progress) options.progress(done, total_weights);
    }
  }
  out.close();
  result.model_bytes = out.offset();

  // Commit: data file first, so a model file never points at a missing data file (a shared file is committed
  // by its owner once every graph of the set is written).
  std::error_code ec;
  const bool own_data = external && !options.shared;
  if (own_data) {
    fs::rename(temp_path_beside(result.data_path), result.data_path, ec);
    if (ec) throw OutputError(result.data_path.string(), "cannot write: " + ec.message());
  }
  fs::rename(tmp, path, ec);
  if (ec) {
    if (own_data) fs::remove(result.data_path, ec);
    throw OutputError(path.string(), "cannot write: " + ec.message());
  }
  temps.commit();
  return result;
}

}  // namespace trex
