#include "io/zip_reader.h"

#include "io/mapped_file.h"
#include "util/error.h"

namespace trex {

namespace {

constexpr uint32_t kLocalSig = 0x04034b50;
constexpr uint32_t kCentralSig = 0x02014b50;
constexpr uint32_t kEocdSig = 0x06054b50;
constexpr uint32_t kZip64LocatorSig = 0x07064b50;
constexpr uint32_t kZip64EocdSig = 0x06064b50;

class Reader {
 public:
  explicit Reader(const MappedFile& f) : f_(f), p_(f.data()), n_(f.size()) {}

  [[noreturn]] void fail(const std::string& problem) const { throw InputError(f_.path(), "zip archive: " + problem); }

  void need(uint64_t off, uint64_t len, const char* what) const {
    if (off > n_ || len > n_ - off) {
      fail(std::string(what) + " at offset " + std::to_string(off) + " (" + std::to_string(len) +
           " bytes) lies beyond the end of the file (" + std::to_string(n_) + " bytes)");
    }
  }
  uint64_t le(uint64_t off, int bytes) const {
    uint64_t v = 0;
    for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | static_cast<uint8_t>(p_[off + i]);
    return v;
  }
  uint16_t u16(uint64_t off) const { return static_cast<uint16_t>(le(off, 2)); }
  uint32_t u32(uint64_t off) const { return static_cast<uint32_t>(le(off, 4)); }
  uint64_t u64(uint64_t off) const { return le(off, 8); }
  size_t size() const { return n_; }
  const std::byte* at(uint64_t off) const { return p_ + off; }

 private:
  const MappedFile& f_;
  const std::byte* p_;
  size_t n_;
};

}  // namespace

bool looks_like_zip(const MappedFile& file) {
  if (file.size() < 4) return false;
  const auto* p = file.data();
  return p[0] == std::byte{'P'} && p[1] == std::byte{'K'} && p[2] == std::byte{3} && p[3] == std::byte{4};
}

std::map<std::string, ZipEntry> read_zip(const MappedFile& file) {
  Reader r(file);
  const uint64_t n = r.size();
  if (n < 22) r.fail("file too small (" + std::to_string(n) + " bytes) to hold an end of central directory record");

  // Find the End Of Central Directory record, scanning back over a comment of up to 65535 bytes.
  uint64_t eocd = UINT64_MAX;
  const uint64_t lowest = n >= 22 + 65535 ? n - 22 - 65535 : 0;
  for (uint64_t off = n - 22 + 1; off-- > lowest;) {
    if (r.u32(off) == kEocdSig && off + 22 + r.u16(off + 20) == n) {
      eocd = off;
      break;
    }
  }
  if (eocd == UINT64_MAX) r.fail("end of central directory record not found");

  uint64_t total = r.u16(eocd + 10);
  uint64_t cd_size = r.u32(eocd + 12);
  uint64_t cd_off = r.u32(eocd + 16);
  if (r.u16(eocd + 4) != 0 || r.u16(eocd + 6) != 0) r.fail("multi-disk archives are not supported");

  // Zip64: a locator immediately before the EOCD points at the Zip64 EOCD record.
  if (eocd >= 20 && r.u32(eocd - 20) == kZip64LocatorSig) {
    const uint64_t z64 = r.u64(eocd - 20 + 8);
    r.need(z64, 56, "zip64 end of central directory record");
    if (r.u32(z64) != kZip64EocdSig) r.fail("bad zip64 end of central directory signature");
    total = r.u64(z64 + 32);
    cd_size = r.u64(z64 + 40);
    cd_off = r.u64(z64 + 48);
  }
  r.need(cd_off, cd_size, "central directory");
  // Each central entry needs at least 46 bytes: bounds the entry count against the file size.
  if (total > cd_size / 46) {
    r.fail("central directory claims " + std::to_string(total) + " entries in " + std::to_string(cd_size) + " bytes");
  }

  std::map<std::string, ZipEntry> out;
  uint64_t pos = cd_off;
  const uint64_t cd_end = cd_off + cd_size;
  for (uint64_t i = 0; i < total; ++i) {
    if (pos > cd_end || cd_end - pos < 46) r.fail("central directory entry " + std::to_string(i) + " is truncated");
    if (r.u32(pos) != kCentralSig) r.fail("bad central directory signature at offset " + std::to_string(pos));
    const uint16_t flags = r.u16(pos + 8);
    const uint16_t method = r.u16(pos + 10);
    uint64_t csize = r.u32(pos + 20);
    uint64_t usize = r.u32(pos + 24);
    const uint16_t name_len = r.u16(pos + 28);
    const uint16_t extra_len = r.u16(pos + 30);
    const uint16_t comment_len = r.u16(pos + 32);
    uint64_t local = r.u32(pos + 42);
    const uint64_t var_len = uint64_t{name_len} + extra_len + comment_len;
    if (cd_end - pos - 46 < var_len) r.fail("central directory entry " + std::to_string(i) + " is truncated");
    std::string name(reinterpret_cast<const char*>(r.at(pos + 46)), name_len);

    // Zip64 extended information: present fields replace the 0xFFFFFFFF placeholders, in this order.
    uint64_t ep = pos + 46 + name_len;
    const uint64_t eend = ep + extra_len;
    while (eend - ep >= 4) {
      const uint16_t id = r.u16(ep);
      const uint16_t len = r.u16(ep + 2);
      if (eend - ep - 4 < len) r.fail("entry '" + name + "': malformed extra field");
      if (id == 0x0001) {
        uint64_t q = ep + 4;
        const uint64_t qend = q + len;
        auto take = [&](uint64_t* field) {
          if (*field != 0xFFFFFFFFu) return;
          if (qend - q < 8) r.fail("entry '" + name + "': truncated zip64 extra field");
          *field = r.u64(q);
          q += 8;
        };
        take(&usize);
        take(&csize);
        take(&local);
      }
      ep += 4 + len;
    }

    if (flags & 0x1) r.fail("entry '" + name + "' is encrypted; not supported");
    if (method != 0) {
      r.fail("entry '" + name + "' is compressed (method " + std::to_string(method) +
             "); only uncompressed (stored) entries are supported - re-save the checkpoint with torch.save");
    }
    if (csize != usize) r.fail("entry '" + name + "': stored entry with compressed size != uncompressed size");

    r.need(local, 30, ("local header of entry '" + name + "'").c_str());
    if (r.u32(local) != kLocalSig) r.fail("entry '" + name + "': bad local header signature");
    const uint64_t data_start = local + 30 + r.u16(local + 26) + r.u16(local + 28);
    r.need(data_start, usize, ("data of entry '" + name + "'").c_str());

    if (!out.emplace(name, ZipEntry{r.at(data_start), static_cast<size_t>(usize)}).second) {
      r.fail("duplicate entry '" + name + "'");
    }
    pos += 46 + var_len;
  }
  return out;
}

}  // namespace trex
