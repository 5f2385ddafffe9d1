#include "io/mapped_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace trex {

namespace {

[[noreturn]] void fail_open(const std::string& path, const std::string& reason) {
  throw InputError(path, "cannot open: " + reason);
}

}  // namespace

std::shared_ptr<MappedFile> MappedFile::open(const std::filesystem::path& path) {
  const std::string p = path.string();
  // stat first so that a FIFO or device is rejected before open() could block on it.
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) fail_open(p, std::strerror(errno));
  if (S_ISDIR(st.st_mode)) fail_open(p, "is a directory");
  if (!S_ISREG(st.st_mode)) fail_open(p, "not a regular file");

  int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) fail_open(p, std::strerror(errno));
  struct stat fst {};
  if (::fstat(fd, &fst) != 0) {
    int e = errno;
    ::close(fd);
    fail_open(p, std::strerror(e));
  }
  if (!S_ISREG(fst.st_mode)) {
    ::close(fd);
    fail_open(p, "not a regular file");
  }

  std::shared_ptr<MappedFile> f(new MappedFile());
  f->path_ = p;
  f->size_ = static_cast<size_t>(fst.st_size);
  if (f->size_ > 0) {
    void* m = ::mmap(nullptr, f->size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      int e = errno;
      ::close(fd);
      f->size_ = 0;
      fail_open(p, std::string("mmap failed: ") + std::strerror(e));
    }
    f->data_ = static_cast<const std::byte*>(m);
  }
  ::close(fd);
  return f;
}

MappedFile::~MappedFile() {
  if (data_ != nullptr && size_ > 0) ::munmap(const_cast<std::byte*>(data_), size_);
}

}  // namespace trex
