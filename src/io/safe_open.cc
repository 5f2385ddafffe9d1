#include "io/safe_open.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

OpenFile::~OpenFile() {
  if (fd_ >= 0) ::close(fd_);
}

OpenFile::OpenFile(OpenFile&& o) noexcept : fd_(o.fd_), size_(o.size_), path_(std::move(o.path_)) { o.fd_ = -1; }

OpenFile& OpenFile::operator=(OpenFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = o.fd_;
    size_ = o.size_;
    path_ = std::move(o.path_);
    o.fd_ = -1;
  }
  return *this;
}

std::string OpenFile::read_all() const {
  std::string s(static_cast<size_t>(size_), '\0');
  size_t done = 0;
  while (done < s.size()) {
    const ssize_t r = ::pread(fd_, s.data() + done, s.size() - done, static_cast<off_t>(done));
    if (r < 0) {
      if (errno == EINTR) continue;
      throw InputError(path_, std::string("cannot read: ") + std::strerror(errno));
    }
    if (r == 0) break;  // shrank since open: keep what is there
    done += static_cast<size_t>(r);
  }
  s.resize(done);
  return s;
}

namespace {

[[noreturn]] void fail_open(const std::string& path, const std::string& reason) {
  throw InputError(path, "cannot open: " + reason);
}

const char* kind_of(mode_t m) {
  if (S_ISDIR(m)) return "is a directory";
  if (S_ISFIFO(m)) return "is a FIFO, not a regular file";
  if (S_ISSOCK(m)) return "is a socket, not a regular file";
  if (S_ISCHR(m) || S_ISBLK(m)) return "is a device, not a regular file";
  return "not a regular file";
}

}  // namespace

OpenFile open_regular_file(const fs::path& path, uint64_t max_size, const char* what) {
  const std::string p = path.string();
  // stat (following symlinks) first, so a FIFO or device is refused before open() could block or act on it.
  struct stat st {};
  if (::stat(p.c_str(), &st) != 0) fail_open(p, std::strerror(errno));
  if (!S_ISREG(st.st_mode)) fail_open(p, kind_of(st.st_mode));
  // O_NONBLOCK: if the file was swapped for a FIFO since the stat, open still returns at once.
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) fail_open(p, std::strerror(errno));
  OpenFile f(fd, 0, p);
  struct stat fst {};
  if (::fstat(fd, &fst) != 0) fail_open(p, std::strerror(errno));
  if (!S_ISREG(fst.st_mode)) fail_open(p, kind_of(fst.st_mode));
  const uint64_t size = static_cast<uint64_t>(fst.st_size);
  if (size > max_size) {
    throw InputError(p, "is " + std::to_string(size) + " bytes, above trex's limit of " + std::to_string(max_size) +
                            " bytes for " + what);
  }
  f.size_ = size;
  return f;
}

bool real_path_inside(const fs::path& root, const fs::path& path) {
  std::error_code ec;
  const fs::path r = fs::weakly_canonical(fs::absolute(root, ec), ec);
  if (ec) return false;
  const fs::path q = fs::weakly_canonical(fs::absolute(path, ec), ec);
  if (ec) return false;
  // Component-wise prefix (a string prefix would accept /a/rootsibling for /a/root).
  auto qi = q.begin();
  for (auto ri = r.begin(); ri != r.end(); ++ri, ++qi) {
    if (ri->empty()) break;  // trailing separator of the root: everything below matches
    if (qi == q.end() || *ri != *qi) return false;
  }
  return true;
}

OpenFile open_regular_file_in(const fs::path& root, const fs::path& path, uint64_t max_size, const char* what) {
  if (!real_path_inside(root, path)) {
    throw InputError(path.string(), "cannot open: resolves to a file outside the folder " + root.string() +
                                        " (symlink or path leaving it)");
  }
  OpenFile f = open_regular_file(path, max_size, what);
  // Check again on what was actually opened, so that a symlink swapped in after the check is caught too.
  const fs::path fd_link = "/proc/self/fd/" + std::to_string(f.fd());
  std::error_code ec;
  const fs::path opened = fs::read_symlink(fd_link, ec);
  if (!ec && !real_path_inside(root, opened)) {
    throw InputError(path.string(), "cannot open: resolves to a file outside the folder " + root.string());
  }
  return f;
}

fs::path checkpoint_root(const fs::path& dir) {
  std::error_code ec;
  const fs::path real = fs::weakly_canonical(fs::absolute(dir, ec), ec);
  if (ec || real.empty()) return dir;
  // <repo>/snapshots/<revision>[/subfolder...]: the files are symlinks into <repo>/blobs.
  fs::path p = real;
  for (int up = 0; up < 8 && p.has_parent_path() && p != p.parent_path(); ++up, p = p.parent_path()) {
    const fs::path parent = p.parent_path();
    if (parent.filename() == "snapshots" && fs::is_directory(parent.parent_path() / "blobs", ec)) {
      return parent.parent_path();
    }
  }
  return dir;
}

}  // namespace trex
