// Minimal reader for uncompressed (STORED) zip archives, as written by torch.save.
// Supports Zip64. Entries are views into the memory-mapped file; every offset is bounds-checked.
#pragma once

#include <cstddef>
#include <map>
#include <string>

namespace trex {

class MappedFile;

struct ZipEntry {
  const std::byte* data = nullptr;
  size_t size = 0;
};

// Reads the central directory of `file`. Throws InputError("<file>: <problem>") for a malformed archive,
// a duplicate entry name, or a compressed/encrypted entry (naming the entry).
std::map<std::string, ZipEntry> read_zip(const MappedFile& file);

// True when the file starts with a zip local-file-header signature ("PK\3\4").
bool looks_like_zip(const MappedFile& file);

}  // namespace trex
