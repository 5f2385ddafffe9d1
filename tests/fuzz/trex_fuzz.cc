// In-process mutation fuzzer for trex's readers (no libFuzzer needed; works with g++ and the ASan/UBSan build).
//
//   trex_fuzz <reader> <N>s|<N> [seed corpus dir] [--seed S]
//
// reader: safetensors | pickle | bin | onnx | config | h5. The second argument is a duration ("5s") or an execution
// count. Seeds: small valid inputs built here, plus files of the matching kind found under the corpus dir.
// Each execution mutates a seed (bit flips, interesting bytes and numbers, insertions, deletions, copies,
// truncation, 1-8 stacked mutations) and runs the reader. An InputError is the expected outcome for bad
// input; any other exception (bad_alloc, logic_error, ...) is a finding, saved to fuzz-<reader>-finding-N.bin;
// a crash (signal) saves the input to fuzz-<reader>-crash.bin before dying. The address space is capped at
// 4 GiB so that an allocation blow-up shows up as a finding. Exit status: 0 when nothing was found.
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "io/config.h"
#include "io/pickle.h"
#include "io/weight_store.h"
#include "onnx/reader.h"
#include "util/error.h"

namespace fs = std::filesystem;
using Bytes = std::string;

namespace {

// ---- seeds ---------------------------------------------------------------------------------------------------
// GCC 12 reports a false -Wrestrict inside std::string's inlined copies here (GCC bug 105651).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wrestrict"

void put_le(Bytes& b, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) b.push_back(static_cast<char>((v >> (8 * i)) & 0xFF));
}

Bytes safetensors_seed() {
  const std::string header =
      R"({"__metadata__":{"format":"pt"},"a.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,24]},)"
      R"("a.bias":{"dtype":"F16","shape":[3],"data_offsets":[24,30]},"b":{"dtype":"I64","shape":[],"data_offsets":[30,38]}})";
  Bytes b;
  std::string h = header;
  while (h.size() % 8) h.push_back(' ');
  put_le(b, h.size(), 8);
  b += h;
  for (int i = 0; i < 38; ++i) b.push_back(static_cast<char>(i * 7));
  return b;
}

// BINUNICODE of `s`.
Bytes uni(const std::string& s) {
  Bytes b = "X";
  put_le(b, s.size(), 4);
  return b + s;
}

// BININT1 of a small int.
Bytes int1(int v) { return Bytes(1, 'K') + static_cast<char>(v); }

// A protocol-2 state dict pickle: OrderedDict of three tensors (one a transposed view) over storages "0", "1".
Bytes pickle_seed() {
  Bytes p = "\x80\x02";
  p += "ccollections\nOrderedDict\n";
  p += ")R(";  // OrderedDict(), then MARK for SETITEMS
  auto tensor = [&](const char* name, const char* key, int numel, const std::vector<int>& size,
                    const std::vector<int>& stride) {
    p += uni(name);
    p += "ctorch._utils\n_rebuild_tensor_v2\n(";
    p += "(" + uni("storage") + "ctorch\nFloatStorage\n" + uni(key) + uni("cpu") + int1(numel) + "tQ";
    p += int1(0);
    p += "(";
    for (int d : size) p += int1(d);
    p += "t(";
    for (int d : stride) p += int1(d);
    p += "t";
    p += "\x89";  // requires_grad False
    p += "ccollections\nOrderedDict\n)R";
    p += "tR";
  };
  tensor("w", "0", 6, {2, 3}, {3, 1});
  tensor("w_t", "0", 6, {3, 2}, {1, 3});
  tensor("b", "1", 3, {3}, {1});
  p += "u.";
  return p;
}

Bytes legacy_bin_seed() {
  Bytes b;
  b += "\x80\x02\x8a\x0a";
  b += std::string("\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19", 10);
  b += ".";
  b += "\x80\x02M";
  put_le(b, 1001, 2);
  b += ".";
  b += "\x80\x02}(" + uni("little_endian") + "\x88u.";  // sys info
  b += pickle_seed();
  b += "\x80\x02](" + uni("0") + uni("1") + "e.";  // storage keys
  put_le(b, 6, 8);
  for (int i = 0; i < 24; ++i) b.push_back(static_cast<char>(i));
  put_le(b, 3, 8);
  for (int i = 0; i < 12; ++i) b.push_back(static_cast<char>(i + 1));
  return b;
}

Bytes config_seed() {
  return R"({"architectures":["BertModel"],"model_type":"bert","hidden_size":32,"num_hidden_layers":2,)"
         R"("num_attention_heads":4,"intermediate_size":37,"vocab_size":99,"max_position_embeddings":128,)"
         R"("type_vocab_size":2,"id2label":{"0":"A","1":"B"},"torch_dtype":"float32","nested":{"a":[1,2,{"b":null}]}})";
}

Bytes onnx_seed() {
  onnx::ModelProto m;
  m.set_ir_version(8);
  m.add_opset_import()->set_version(17);
  auto* g = m.mutable_graph();
  g->set_name("g");
  auto* n = g->add_node();
  n->set_op_type("MatMul");
  n->add_input("x");
  n->add_input("w");
  n->add_output("y");
  auto* w = g->add_initializer();
  w->set_name("w");
  w->set_data_type(onnx::TensorProto::FLOAT);
  w->add_dims(2);
  w->add_dims(2);
  w->set_raw_data(std::string(16, '\x01'));
  auto* b = g->add_initializer();
  b->set_name("b");
  b->set_data_type(onnx::TensorProto::FLOAT);
  b->add_dims(2);
  b->add_float_data(1.0f);
  b->add_float_data(2.0f);
  auto* e = g->add_initializer();
  e->set_name("e");
  e->set_data_type(onnx::TensorProto::INT64);
  e->add_dims(1);
  e->set_data_location(onnx::TensorProto::EXTERNAL);
  const std::string entries[][2] = {{"location", "w.bin"}, {"offset", "0"}, {"length", "8"}};
  for (const auto& kv_text : entries) {
    onnx::StringStringEntryProto* kv = e->add_external_data();
    *kv->mutable_key() = kv_text[0];
    *kv->mutable_value() = kv_text[1];
  }
  auto* attr = n->add_attribute();
  attr->set_name("t");
  attr->set_type(onnx::AttributeProto::TENSOR);
  attr->mutable_t()->set_data_type(onnx::TensorProto::FLOAT);
  return m.SerializeAsString();
}

#pragma GCC diagnostic pop

// ---- targets -------------------------------------------------------------------------------------------------

struct Target {
  const char* name;
  const char* file_name;                       // where a file-based target writes its input ("" = in memory)
  std::function<Bytes()> seed;
  std::vector<std::string> corpus_suffixes;    // corpus files used as seeds
  std::function<void(const Bytes&, const fs::path&)> run;
};

std::vector<Target> targets() {
  return {
      {"safetensors", "model.safetensors", safetensors_seed, {".safetensors"},
       [](const Bytes&, const fs::path& f) { (void)trex::WeightStore::open_file(f); }},
      {"pickle", "", pickle_seed, {".pkl"},
       [](const Bytes& in, const fs::path&) {
         auto root = trex::unpickle(reinterpret_cast<const std::byte*>(in.data()), in.size(), "fuzz.pkl");
         (void)trex::state_dict_tensors(*root, "fuzz.pkl", trex::pickle_copy_budget(in.size()));
       }},
      {"bin", "pytorch_model.bin", legacy_bin_seed, {".bin"},
       [](const Bytes&, const fs::path& f) { (void)trex::WeightStore::open_file(f); }},
      {"onnx", "model.onnx", onnx_seed, {".onnx"},
       [](const Bytes&, const fs::path& f) {
         trex::validate_external_data(f);
         (void)trex::read_model(f);
       }},
      // tf_model.h5: the seeds are the test fixtures' files (the corpus folder); the built-in one is only the signature.
      {"h5", "tf_model.h5", [] { return Bytes("\x89HDF\r\n\x1a\n", 8); }, {"tf_model.h5"},
       [](const Bytes&, const fs::path& f) {
         ::setenv("TREX_H5_TIMEOUT_S", "2", 0);  // a corrupt file that makes HDF5 loop is refused after 2 s
         (void)trex::WeightStore::open_file(f);
       }},
      {"config", "config.json", config_seed, {"config.json", ".index.json"},
       [](const Bytes&, const fs::path& f) {
         auto c = trex::ModelConfig::load(f);
         for (const char* k : {"hidden_size", "num_hidden_layers", "vocab_size"}) (void)c.get_int(k, 1);
         (void)c.num_labels();
       }},
  };
}

// ---- mutation ------------------------------------------------------------------------------------------------

void mutate_once(Bytes& b, std::mt19937_64& rng, const std::vector<Bytes>& seeds) {
  auto pick = [&](size_t n) { return n == 0 ? size_t{0} : static_cast<size_t>(rng() % n); };
  static const char* kNumbers[] = {"0", "-1", "4294967296", "18446744073709551615", "9223372036854775807",
                                   "1e308", "72057594037927936", "[[[[[[[[", "\"\"", "{}", "null"};
  switch (rng() % 10) {
    case 0:  // bit flip
      if (!b.empty()) b[pick(b.size())] ^= static_cast<char>(1u << (rng() % 8));
      break;
    case 1: {  // interesting byte
      static const unsigned char kBytes[] = {0x00, 0xFF, 0x7F, 0x80, 0x01, '[', '{', '"', '.', '(', 'h', 'R'};
      if (!b.empty()) b[pick(b.size())] = static_cast<char>(kBytes[pick(sizeof kBytes)]);
      break;
    }
    case 2: {  // interesting little-endian integer (lengths, counts)
      if (b.size() < 8) break;
      static const uint64_t kInts[] = {0, 1, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1ull << 32, 1ull << 56, ~0ull};
      const uint64_t v = kInts[pick(std::size(kInts))];
      const int width = 1 << (rng() % 4);
      const size_t at = pick(b.size() - static_cast<size_t>(width) + 1);
      for (int i = 0; i < width; ++i) b[at + static_cast<size_t>(i)] = static_cast<char>((v >> (8 * i)) & 0xFF);
      break;
    }
    case 3: {  // insert random bytes
      const size_t n = 1 + pick(16);
      Bytes ins;
      for (size_t i = 0; i < n; ++i) ins.push_back(static_cast<char>(rng()));
      b.insert(pick(b.size() + 1), ins);
      break;
    }
    case 4:  // delete a range
      if (!b.empty()) {
        const size_t at = pick(b.size());
        b.erase(at, 1 + pick(std::min<size_t>(64, b.size() - at)));
      }
      break;
    case 5:  // duplicate a range somewhere
      if (!b.empty()) {
        const size_t at = pick(b.size());
        const Bytes chunk = b.substr(at, 1 + pick(std::min<size_t>(256, b.size() - at)));
        const int reps = 1 + static_cast<int>(pick(8));
        for (int r = 0; r < reps; ++r) b.insert(pick(b.size() + 1), chunk);
      }
      break;
    case 6:  // truncate
      if (!b.empty()) b.resize(pick(b.size()));
      break;
    case 7: {  // replace a digit run (or any spot) with an interesting token
      const std::string tok = kNumbers[pick(std::size(kNumbers))];
      size_t at = pick(b.size() + 1);
      size_t end = at;
      while (end < b.size() && b[end] >= '0' && b[end] <= '9') ++end;
      b.replace(at, end - at, tok);
      break;
    }
    case 8: {  // splice with another seed
      const Bytes& o = seeds[pick(seeds.size())];
      if (!o.empty() && !b.empty()) b = b.substr(0, pick(b.size())) + o.substr(pick(o.size()));
      break;
    }
    case 9:  // swap two bytes
      if (b.size() > 1) std::swap(b[pick(b.size())], b[pick(b.size())]);
      break;
  }
}

// The current input, written out by the signal handler when the reader crashes.
const char* g_current = nullptr;
size_t g_current_size = 0;
int g_crash_fd = -1;

void on_crash(int sig) {
  if (g_crash_fd >= 0 && g_current != nullptr) {
    ssize_t w = ::write(g_crash_fd, g_current, g_current_size);
    (void)w;
  }
  const char msg[] = "trex_fuzz: CRASH (signal); input saved\n";
  ssize_t w = ::write(2, msg, sizeof msg - 1);
  (void)w;
  ::signal(sig, SIG_DFL);
  ::raise(sig);
}

void write_file(const fs::path& p, const Bytes& b) {
  std::ofstream f(p, std::ios::binary | std::ios::trunc);
  f.write(b.data(), static_cast<std::streamsize>(b.size()));
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: trex_fuzz safetensors|pickle|bin|onnx|config|h5 <N>s|<N> [corpus dir] [--seed S]\n");
    return 1;
  }
  const std::string which = argv[1], budget = argv[2];
  std::string corpus;
  uint64_t seed = 1;
  for (int i = 3; i < argc; ++i) {
    if (std::string(argv[i]) == "--seed" && i + 1 < argc) seed = std::stoull(argv[++i]);
    else corpus = argv[i];
  }
  const bool timed = !budget.empty() && budget.back() == 's';
  const double limit = std::stod(timed ? budget.substr(0, budget.size() - 1) : budget);

  std::vector<Target> all = targets();
  const Target* t = nullptr;
  for (const auto& x : all)
    if (which == x.name) t = &x;
  if (t == nullptr) {
    std::fprintf(stderr, "trex_fuzz: unknown reader '%s'\n", which.c_str());
    return 1;
  }

  // An allocation blow-up must become a bad_alloc finding, not swap the machine (ASan reserves much more).
#if !defined(__SANITIZE_ADDRESS__)
  struct rlimit rl {4ull << 30, 4ull << 30};
  setrlimit(RLIMIT_AS, &rl);
#endif

  std::vector<Bytes> seeds{t->seed()};
  std::error_code ec;
  if (!corpus.empty() && fs::is_directory(corpus, ec)) {
    for (auto it = fs::recursive_directory_iterator(corpus, fs::directory_options::skip_permission_denied, ec);
         it != fs::recursive_directory_iterator(); it.increment(ec)) {
      if (ec || !it->is_regular_file(ec) || it->file_size(ec) > (1u << 20)) continue;
      const std::string name = it->path().filename().string();
      for (const auto& suf : t->corpus_suffixes) {
        if (name.size() >= suf.size() && name.compare(name.size() - suf.size(), suf.size(), suf) == 0) {
          std::ifstream f(it->path(), std::ios::binary);
          seeds.emplace_back(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
          break;
        }
      }
      if (seeds.size() > 64) break;
    }
  }

  const fs::path tmp_root = fs::is_directory("/dev/shm", ec) ? fs::path("/dev/shm") : fs::temp_directory_path();
  const fs::path dir = tmp_root / ("trex_fuzz_" + which + "_" + std::to_string(::getpid()));
  fs::create_directories(dir);
  write_file(dir / "w.bin", Bytes(64, '\0'));  // external data the ONNX seed points at
  const fs::path input = std::string(t->file_name).empty() ? fs::path() : dir / t->file_name;
  const std::string crash_path = "fuzz-" + which + "-crash.bin";
  g_crash_fd = ::open(crash_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  for (int sig : {SIGSEGV, SIGBUS, SIGABRT, SIGFPE, SIGILL}) ::signal(sig, on_crash);

  std::mt19937_64 rng(seed);
  uint64_t execs = 0, rejected = 0, accepted = 0, findings = 0;
  double slowest = 0;
  const auto t0 = std::chrono::steady_clock::now();
  auto elapsed = [&] { return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count(); };
  while (timed ? elapsed() < limit : static_cast<double>(execs) < limit) {
    Bytes b = execs < seeds.size() ? seeds[execs] : seeds[rng() % seeds.size()];
    // The first executions run the seeds unmutated (they must be accepted or cleanly refused too).
    if (execs >= seeds.size()) {
      const int n = 1 + static_cast<int>(rng() % 8);
      for (int i = 0; i < n; ++i) mutate_once(b, rng, seeds);
    }
    g_current = b.data();
    g_current_size = b.size();
    if (!input.empty()) write_file(input, b);
    const auto s0 = std::chrono::steady_clock::now();
    try {
      t->run(b, input);
      ++accepted;
    } catch (const trex::Error& e) {
      ++rejected;
      if (execs < seeds.size() && std::getenv("TREX_FUZZ_VERBOSE")) std::fprintf(stderr, "trex_fuzz: seed %llu refused: %s\n", static_cast<unsigned long long>(execs), e.what());
    } catch (const std::exception& e) {
      ++findings;
      const std::string path = "fuzz-" + which + "-finding-" + std::to_string(findings) + ".bin";
      write_file(path, b);
      std::fprintf(stderr, "trex_fuzz: %s: unexpected exception '%s' (input saved to %s)\n", which.c_str(), e.what(),
                   path.c_str());
    }
    slowest = std::max(slowest, std::chrono::duration<double>(std::chrono::steady_clock::now() - s0).count());
    ++execs;
  }
  fs::remove_all(dir, ec);
  if (g_crash_fd >= 0) ::close(g_crash_fd);
  ::unlink(crash_path.c_str());  // no crash happened
  std::printf("trex_fuzz %s: %llu executions in %.1f s (%llu accepted, %llu refused with InputError), "
              "%llu findings, 0 crashes, slowest input %.1f ms\n",
              which.c_str(), static_cast<unsigned long long>(execs), elapsed(),
              static_cast<unsigned long long>(accepted), static_cast<unsigned long long>(rejected),
              static_cast<unsigned long long>(findings), slowest * 1e3);
  return findings == 0 ? 0 : 1;
}
