// Checks and temporary names for files trex writes. Every writer writes to a temporary file beside its
// output and renames it at the end, so a failure never leaves a partial output behind.
#pragma once

#include <filesystem>

namespace trex {

// Throws OutputError naming `out` when its folder does not exist or is not writable, or `out` is a folder.
void check_output_path(const std::filesystem::path& out);

// `.<name>.tmp-<pid>` in the same folder as `out` (same file system, so the final rename is atomic).
std::filesystem::path temp_path_beside(const std::filesystem::path& out);

}  // namespace trex
