#include "io/mapped_file.h"

#include <sys/mman.h>

#include <cerrno>
#include <cstring>

#include "io/safe_open.h"
#include "util/error.h"

namespace trex {

namespace {

std::shared_ptr<MappedFile> map_open_file(const OpenFile& f) {
  return MappedFile::map(f);
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::map(const OpenFile& of) {
  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = of.path();
  f->size_ = static_cast<size_t>(of.size());
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, of.fd(), 0);
    if (m == MAP_FAILED) {
      const int e = errno;
      f->size_ = 0;
      throw InputError(of.path(), std::string("cannot open: mmap failed: ") + std::strerror(e));
    }
    f->data_ = static_cast<const std::byte*>(m);
  }
  return f;
}

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  return map_open_file(open_regular_file(path));
}

std::shared_ptr<MappedFile> MappedFile::open_in(const std::filesystem::path& root, const std::filesystem::path& path) {
  return map_open_file(open_regular_file_in(root, path));
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace trex
