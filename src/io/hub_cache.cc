#include "io/hub_cache.h"

#include <cstdlib>
#include <fstream>
#include <system_error>

#include "io/h5_checkpoint.h"
#include "io/hub_download.h"
#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

std::string env(const char* name) {
  const char* v = std::getenv(name);
  return v ? v : "";
}

// A hub id part: letters, digits, '-', '_', '.'; never '.' or '..' alone (no path tricks).
bool valid_id_part(const std::string& s) {
  if (s.empty() || s == "." || s == ".." || s.size() > 96) return false;
  for (char c : s)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) return false;
  return true;
}

// A revision: a ref name (branch/tag, may contain '/') or a commit hash; no '..' components, no absolute paths.
bool valid_revision(const std::string& r) {
  if (r.empty() || r.size() > 255 || r.front() == '/') return false;
  for (const auto& part : fs::path(r))
    if (part == ".." || part == ".") return false;
  for (char c : r)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  return true;
}

bool is_hash(const std::string& s) {
  if (s.size() != 40) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// The snapshot of a cache repo folder at `revision`.
fs::path snapshot_of(const fs::path& repo, const std::string& id, const std::string& revision) {
  const std::string rev = revision.empty() ? "main" : revision;
  if (!valid_revision(rev)) throw UsageError("invalid --revision '" + rev + "'");
  std::string hash = rev;
  std::error_code ec;
  const fs::path ref = repo / "refs" / rev;
  if (fs::is_regular_file(ref, ec)) {
    std::ifstream f(ref);
    std::getline(f, hash);
    while (!hash.empty() && (hash.back() == '\n' || hash.back() == '\r' || hash.back() == ' ')) hash.pop_back();
    if (!is_hash(hash)) throw InputError(ref.string(), "does not hold a commit hash");
  } else if (!is_hash(rev)) {
    throw InputError(repo.string(), "model '" + id + "' has no revision '" + rev + "' in the cache (refs/" + rev +
                                        " is missing)");
  }
  const fs::path snap = repo / "snapshots" / hash;
  if (!fs::is_directory(snap, ec))
    throw InputError(snap.string(), "snapshot of '" + id + "' at revision '" + rev + "' is not in the cache");
  return snap;
}

}  // namespace

fs::path hub_cache_dir() {
  if (const std::string c = env("HF_HUB_CACHE"); !c.empty()) return c;
  if (const std::string h = env("HF_HOME"); !h.empty()) return fs::path(h) / "hub";
  const std::string home = env("HOME");
  return fs::path(home.empty() ? "/" : home) / ".cache" / "huggingface" / "hub";
}

fs::path resolve_model_dir(const std::string& model, const std::string& revision,
                           const std::function<void(const std::string&, uint64_t, uint64_t)>& progress,
                           Framework framework) {
  std::error_code ec;
  const fs::path p(model);
  if (fs::is_directory(p, ec)) {
    // A cache repo folder (models--ORG--NAME) holds refs/ and snapshots/, not config.json.
    const std::string name = p.filename().empty() ? p.parent_path().filename().string() : p.filename().string();
    if (name.rfind("models--", 0) == 0 && fs::is_directory(p / "snapshots", ec) && !fs::exists(p / "config.json", ec))
      return snapshot_of(p, name, revision);
    if (!revision.empty()) throw UsageError("--revision applies to hub ids and cache folders, not to " + model);
    return p;
  }
  // ORG/NAME (or NAME): a hub id.
  const auto slash = model.find('/');
  const std::string org = slash == std::string::npos ? "" : model.substr(0, slash);
  const std::string name = slash == std::string::npos ? model : model.substr(slash + 1);
  const bool id_like = (slash == std::string::npos || valid_id_part(org)) && valid_id_part(name) &&
                       name.find('/') == std::string::npos;
  if (!id_like) throw InputError(model, "checkpoint folder does not exist");
  const fs::path cache = hub_cache_dir();
  const fs::path repo = cache / ("models--" + (org.empty() ? name : org + "--" + name));
  const bool offline = env("HF_HUB_OFFLINE") == "1" || env("HF_HUB_OFFLINE") == "true";
  if (offline) {
    if (!fs::is_directory(repo, ec))
      throw InputError(model, "not a folder, and not in the Hugging Face cache " + cache.string() +
                                  " (HF_HUB_OFFLINE=1: no download)");
    return snapshot_of(repo, model, revision);
  }
  try {
    if (fs::is_directory(repo, ec)) {  // cached: no network
      fs::path snap = snapshot_of(repo, model, revision);
      if (framework != Framework::kTensorFlow || fs::exists(snap / kTfWeightsFile, ec)) return snap;
    }
  } catch (const InputError&) {
    // not this revision: download it
  }
  HubDownloadOptions o;
  o.cache = cache;
  o.progress = progress;
  o.framework = framework;
  return download_model(model, revision, o);
}

}  // namespace trex
