#include "io/hub_download.h"

#include <curl/curl.h>
#include <openssl/evp.h>
#include <unistd.h>

#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <set>
#include <system_error>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/h5_checkpoint.h"
#include "io/checkpoint_files.h"
#include "io/hub_cache.h"
#include "util/error.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

std::string env_or(const char* name, const std::string& fallback) {
  const char* v = std::getenv(name);
  return v && *v ? v : fallback;
}

std::string lower(std::string s) {
  for (char& c : s) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return s;
}

bool is_hex(const std::string& s, size_t n) {
  if (s.size() != n) return false;
  for (char c : s)
    if (!std::isxdigit(static_cast<unsigned char>(c))) return false;
  return true;
}

// A file name the server or an index gave us: relative, no '..', a conservative character set.
bool safe_file_name(const std::string& f) {
  if (f.empty() || f.size() > 255 || f.front() == '/') return false;
  for (const auto& part : fs::path(f))
    if (part == ".." || part == "." || part.empty()) return false;
  for (char c : f)
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.' || c == '/')) return false;
  return true;
}

struct CurlGlobal {
  CurlGlobal() { curl_global_init(CURL_GLOBAL_DEFAULT); }
  ~CurlGlobal() { curl_global_cleanup(); }
};

struct Response {
  long status = 0;
  std::map<std::string, std::string> headers;  // lower-case names, last value wins
};

size_t on_header(char* data, size_t size, size_t n, void* user) {
  auto* r = static_cast<Response*>(user);
  const std::string line(data, size * n);
  if (line.rfind("HTTP/", 0) == 0) r->headers.clear();  // a new response (after a redirect)
  const auto colon = line.find(':');
  if (colon != std::string::npos && line.size() < 8192) {
    std::string value = line.substr(colon + 1);
    while (!value.empty() && (value.front() == ' ' || value.front() == '\t')) value.erase(0, 1);
    while (!value.empty() && (value.back() == '\r' || value.back() == '\n' || value.back() == ' ')) value.pop_back();
    r->headers[lower(line.substr(0, colon))] = value;
  }
  return size * n;
}

struct Sink {
  std::FILE* file = nullptr;
  EVP_MD_CTX* sha = nullptr;
  uint64_t written = 0;
  uint64_t limit = 0;  // refuse bodies beyond the announced size
  bool too_big = false;
};

size_t on_body(char* data, size_t size, size_t n, void* user) {
  auto* s = static_cast<Sink*>(user);
  const size_t bytes = size * n;
  if (s->limit && s->written + bytes > s->limit) {
    s->too_big = true;
    return 0;  // aborts the transfer
  }
  if (std::fwrite(data, 1, bytes, s->file) != bytes) return 0;
  s->written += bytes;
  return bytes;
}

struct Progress {
  const HubDownloadOptions* options;
  std::string file;
  uint64_t offset = 0;
  uint64_t total = 0;
};

int on_progress(void* user, curl_off_t /*dltotal*/, curl_off_t dlnow, curl_off_t, curl_off_t) {
  auto* p = static_cast<Progress*>(user);
  if (p->options->progress) p->options->progress(p->file, p->offset + static_cast<uint64_t>(dlnow), p->total);
  return 0;
}

class Hub {
 public:
  Hub(std::string repo_id, const HubDownloadOptions& o) : id_(std::move(repo_id)), o_(o) {
    endpoint_ = o.endpoint.empty() ? env_or("HF_ENDPOINT", "https://huggingface.co") : o.endpoint;
    while (!endpoint_.empty() && endpoint_.back() == '/') endpoint_.pop_back();
    token_ = o.token.empty() ? env_or("HF_TOKEN", "") : o.token;
  }

  std::string url(const std::string& revision, const std::string& file) const {
    return endpoint_ + "/" + id_ + "/resolve/" + revision + "/" + file;
  }

  // HEAD without following redirects: the hub's own response carries the commit and the LFS etag/size.
  Response head(const std::string& u) const {
    Response r;
    perform(u, [&](CURL* c) {
      curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
      curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 0L);
      curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
      curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
    }, &r);
    return r;
  }

  // GET into `sink`, from byte `offset` on (Range) when it is non-zero; follows redirects.
  Response get(const std::string& u, Sink* sink, uint64_t offset, Progress* progress) const {
    Response r;
    const std::string range = std::to_string(offset) + "-";
    perform(u, [&](CURL* c) {
      curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
      curl_easy_setopt(c, CURLOPT_MAXREDIRS, 5L);
      curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
      curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
      curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
      curl_easy_setopt(c, CURLOPT_WRITEDATA, sink);
      curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, on_progress);
      curl_easy_setopt(c, CURLOPT_XFERINFODATA, progress);
      curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
      if (offset) curl_easy_setopt(c, CURLOPT_RANGE, range.c_str());
    }, &r);
    return r;
  }

  const std::string& id() const { return id_; }

 private:
  template <typename Setup>
  void perform(const std::string& u, Setup setup, Response* r) const {
    std::unique_ptr<CURL, decltype(&curl_easy_cleanup)> c(curl_easy_init(), curl_easy_cleanup);
    if (!c) throw InputError(u, "cannot start an HTTP client");
    curl_slist* headers = nullptr;
    const std::string auth = "Authorization: Bearer " + token_;
    if (!token_.empty()) headers = curl_slist_append(headers, auth.c_str());
    headers = curl_slist_append(headers, "User-Agent: trex/" TREX_VERSION);
    std::unique_ptr<curl_slist, decltype(&curl_slist_free_all)> guard(headers, curl_slist_free_all);
    curl_easy_setopt(c.get(), CURLOPT_URL, u.c_str());
    curl_easy_setopt(c.get(), CURLOPT_HTTPHEADER, headers);
    curl_easy_setopt(c.get(), CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(c.get(), CURLOPT_REDIR_PROTOCOLS_STR, "https,http");
    curl_easy_setopt(c.get(), CURLOPT_CONNECTTIMEOUT, o_.timeout_s);
    // Abort when less than 1 byte/s arrives for timeout_s (a stalled connection), not on slow-but-moving ones.
    curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(c.get(), CURLOPT_LOW_SPEED_TIME, o_.timeout_s);
    setup(c.get());
    const CURLcode rc = curl_easy_perform(c.get());
    curl_easy_getinfo(c.get(), CURLINFO_RESPONSE_CODE, &r->status);
    if (rc != CURLE_OK && rc != CURLE_WRITE_ERROR) throw InputError(u, std::string("download failed: ") + curl_easy_strerror(rc));
    if (rc == CURLE_WRITE_ERROR) r->status = -1;
  }

  std::string id_, endpoint_, token_;
  const HubDownloadOptions& o_;
};

// What the server says about one file.
struct FileMeta {
  std::string commit, etag;
  uint64_t size = 0;
};

void check_status(const Hub& hub, const std::string& u, long status) {
  if (status == 401 || status == 403)
    throw InputError(u, "access denied (HTTP " + std::to_string(status) + "): a gated or private model needs HF_TOKEN");
  if (status == 404) throw InputError(u, "not found on the hub (HTTP 404): check the id '" + hub.id() + "' and revision");
  if (status < 200 || status >= 400) throw InputError(u, "the hub answered HTTP " + std::to_string(status));
}

// nullopt-like: `found` false when the server has no such file (404).
bool file_meta(const Hub& hub, const std::string& revision, const std::string& file, FileMeta* m) {
  const std::string u = hub.url(revision, file);
  Response r = hub.head(u);
  if (r.status == 404) return false;
  check_status(hub, u, r.status);
  auto header = [&](const char* k) {
    auto it = r.headers.find(k);
    return it == r.headers.end() ? std::string() : it->second;
  };
  m->commit = header("x-repo-commit");
  std::string etag = header("x-linked-etag");
  if (etag.empty()) etag = header("etag");
  if (etag.rfind("W/", 0) == 0) etag.erase(0, 2);
  if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"') etag = etag.substr(1, etag.size() - 2);
  m->etag = etag;
  const std::string size = header("x-linked-size").empty() ? header("content-length") : header("x-linked-size");
  m->size = size.empty() ? 0 : std::strtoull(size.c_str(), nullptr, 10);
  if (!is_hex(m->commit, 40)) throw InputError(u, "the server sent no commit hash (X-Repo-Commit)");
  if (m->etag.empty() || m->etag.size() > 128 || !safe_file_name(m->etag) || m->etag.find('/') != std::string::npos)
    throw InputError(u, "the server sent no usable ETag");
  return true;
}

std::string sha256_hex(EVP_MD_CTX* ctx) {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int n = 0;
  EVP_DigestFinal_ex(ctx, digest, &n);
  std::string hex;
  char b[3];
  for (unsigned int i = 0; i < n; ++i) {
    std::snprintf(b, sizeof b, "%02x", digest[i]);
    hex += b;
  }
  return hex;
}

// sha256 of a file's bytes.
std::string file_sha256(const fs::path& p) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr);
  std::ifstream f(p, std::ios::binary);
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    if (f.gcount() > 0) EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<size_t>(f.gcount()));
  }
  return sha256_hex(ctx.get());
}

// Downloads `file` into blobs/<etag> (resuming a partial .incomplete), checks it, and links it into the snapshot.
void fetch(const Hub& hub, const HubDownloadOptions& o, const fs::path& repo, const std::string& revision,
           const std::string& file, const FileMeta& m) {
  if (!safe_file_name(file)) throw InputError(hub.url(revision, file), "refusing an unsafe file name");
  std::error_code ec;
  const fs::path blobs = repo / "blobs", snap = repo / "snapshots" / m.commit;
  fs::create_directories(blobs, ec);
  fs::create_directories((snap / file).parent_path(), ec);
  if (ec) throw OutputError(repo.string(), "cannot write the cache: " + ec.message());
  const fs::path blob = blobs / m.etag;
  if (!fs::exists(blob, ec)) {
    const fs::path part = fs::path(blob.string() + ".incomplete");
    const uint64_t have = fs::exists(part, ec) ? fs::file_size(part, ec) : 0;
    const std::string u = hub.url(m.commit, file);
    Sink sink;
    sink.file = std::fopen(part.c_str(), have ? "ab" : "wb");
    if (!sink.file) throw OutputError(part.string(), "cannot write the cache");
    sink.written = have;
    sink.limit = m.size;
    Progress progress{&o, file, have, m.size};
    Response r;
    try {
      r = hub.get(u, &sink, have, &progress);
    } catch (...) {
      std::fclose(sink.file);
      throw;  // the partial file stays for the next run to resume
    }
    std::fclose(sink.file);
    if (r.status == 200 && have) {
      // The server ignored the range: the body is the whole file, appended after the old part. Start over.
      fs::remove(part, ec);
      throw InputError(u, "the server does not resume downloads; run again to download from the start");
    }
    if (sink.too_big) {
      fs::remove(part, ec);
      throw InputError(u, "the server sent more bytes than the announced " + std::to_string(m.size));
    }
    check_status(hub, u, r.status);
    const uint64_t got = fs::file_size(part, ec);
    if (m.size && got != m.size)
      throw InputError(u, "download interrupted at " + std::to_string(got) + " of " + std::to_string(m.size) +
                              " bytes; run again to resume");
    // LFS files are named by their sha256: check the bytes before they enter the cache.
    if (is_hex(m.etag, 64) && file_sha256(part) != lower(m.etag)) {
      fs::remove(part, ec);
      throw InputError(u, "checksum mismatch (sha256 differs from the hub's); the corrupt download was removed");
    }
    fs::rename(part, blob, ec);
    if (ec) throw OutputError(blob.string(), "cannot write the cache: " + ec.message());
  }
  const fs::path link = snap / file;
  const fs::path target = fs::relative(blob, link.parent_path(), ec);
  const fs::path tmp = fs::path(link.string() + ".tmp-" + std::to_string(::getpid()));
  fs::remove(tmp, ec);
  fs::create_symlink(target, tmp, ec);
  if (!ec) fs::rename(tmp, link, ec);
  if (ec) throw OutputError(link.string(), "cannot write the cache: " + ec.message());
}

void write_ref(const fs::path& repo, const std::string& revision, const std::string& commit) {
  if (is_hex(revision, 40)) return;
  std::error_code ec;
  const fs::path ref = repo / "refs" / revision;
  fs::create_directories(ref.parent_path(), ec);
  const fs::path tmp = fs::path(ref.string() + ".tmp-" + std::to_string(::getpid()));
  {
    std::ofstream f(tmp);
    f << commit;
  }
  fs::rename(tmp, ref, ec);
  if (ec) throw OutputError(ref.string(), "cannot write the cache: " + ec.message());
}

}  // namespace

fs::path download_model(const std::string& repo_id, const std::string& revision_in, const HubDownloadOptions& o) {
  static CurlGlobal curl;
  const std::string revision = revision_in.empty() ? "main" : revision_in;
  Hub hub(repo_id, o);
  const fs::path repo = (o.cache.empty() ? hub_cache_dir() : o.cache) / ("models--" + [&] {
                          std::string s = repo_id;
                          for (size_t p = s.find('/'); p != std::string::npos; p = s.find('/')) s.replace(p, 1, "--");
                          return s;
                        }());
  FileMeta config;
  if (!file_meta(hub, revision, "config.json", &config))
    throw InputError(hub.url(revision, "config.json"), "not found on the hub (HTTP 404): check the id '" + repo_id +
                                                           "' and revision");
  const std::string commit = config.commit;
  // Everything else is fetched at the commit config.json resolved to, so one snapshot is consistent.
  auto get_if_there = [&](const std::string& file) {
    FileMeta m;
    if (!file_meta(hub, commit, file, &m)) return false;
    m.commit = commit;
    fetch(hub, o, repo, commit, file, m);
    return true;
  };
  config.commit = commit;
  fetch(hub, o, repo, commit, "config.json", config);

  bool weights = false;
  if (o.framework == Framework::kTensorFlow) {
    if (!get_if_there(kTfWeightsFile))
      throw InputError(hub.url(commit, kTfWeightsFile), "the model has no tf_model.h5 (asked for by --framework tf)");
    weights = true;
  }
  for (const char* index : {"model.safetensors.index.json", "pytorch_model.bin.index.json"}) {
    if (weights || !get_if_there(index)) continue;
    std::ifstream f(repo / "snapshots" / commit / index);
    nlohmann::json j = nlohmann::json::parse(f, nullptr, /*allow_exceptions=*/false);
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      throw InputError(hub.url(commit, index), "not a shard index (no weight_map object)");
    std::set<std::string> shards;
    for (const auto& [name, shard] : j["weight_map"].items())
      if (shard.is_string()) shards.insert(shard.get<std::string>());
    if (shards.size() > 10000) throw InputError(hub.url(commit, index), "lists too many shards");
    for (const auto& s : shards)
      if (!get_if_there(s)) throw InputError(hub.url(commit, s), "shard listed in " + std::string(index) + " is missing");
    weights = true;
  }
  for (const char* single : {"model.safetensors", "pytorch_model.bin"})
    if (!weights && get_if_there(single)) weights = true;
  if (!weights && o.framework == Framework::kAuto && get_if_there(kTfWeightsFile)) weights = true;
  if (!weights)
    throw InputError(hub.url(commit, ""), o.framework == Framework::kAuto
                                              ? "the model has no model.safetensors, pytorch_model.bin (sharded or "
                                                "not) or tf_model.h5"
                                              : "the model has no model.safetensors or pytorch_model.bin (sharded or not)");
  get_if_there("generation_config.json");
  for (const char* const* f = kTokenizerFiles; *f; ++f) get_if_there(*f);
  write_ref(repo, revision, commit);
  return repo / "snapshots" / commit;
}

}  // namespace trex
