// SentencePiece model folders (see spm.h).
#include "tokenizers/spm.h"

#include <dlfcn.h>

#include <algorithm>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

#include "io/json_file.h"
#include "io/safe_open.h"
#include "tokenizers/spm_plugin_api.h"
#include "tokenizers/text.h"
#include "util/error.h"

namespace trex::tokenizers {

using detail::count_chars;
using detail::find_invalid_utf8;
using detail::is_whitespace;
using detail::next_char;

namespace {

constexpr uint64_t kMaxSpmModelBytes = uint64_t{64} << 20;
const std::string kSpaceSymbol = "\xE2\x96\x81";  // U+2581

// libtrex_spm_plugin.so, loaded once: $TREX_SPM_PLUGIN when set, else next to the executable, else
// <exe>/../lib/trex/, else the library search path. RTLD_DEEPBIND: see spm_plugin_api.h. Never unloaded.
const TrexSpmApi& plugin() {
  static const TrexSpmApi* api = nullptr;
  static std::string error;
  static std::once_flag once;
  std::call_once(once, [] {
    namespace fs = std::filesystem;
    const char* name = "libtrex_spm_plugin.so";
    std::vector<std::string> candidates;
    if (const char* env = std::getenv("TREX_SPM_PLUGIN"); env && *env) candidates.emplace_back(env);
    std::error_code ec;
    const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
    if (!ec) {
      candidates.push_back((exe.parent_path() / name).string());
      candidates.push_back((exe.parent_path().parent_path() / "lib" / "trex" / name).string());
    }
    candidates.emplace_back(name);
    error = std::string(name) + " not found next to the executable";
    for (const auto& c : candidates) {
      if (c.find('/') != std::string::npos && !fs::exists(c, ec)) continue;
#if defined(__SANITIZE_ADDRESS__)
      // The sanitizer runtimes abort the process on RTLD_DEEPBIND.
      error = "not available in sanitizer builds (the plugin needs RTLD_DEEPBIND)";
      return;
#endif
      void* h = ::dlopen(c.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
      if (!h) {
        const char* e = ::dlerror();
        error = "cannot load " + c + ": " + (e ? e : "unknown error");
        continue;
      }
      auto entry = reinterpret_cast<TrexSpmEntryFn>(::dlsym(h, TREX_SPM_PLUGIN_ENTRY));
      if (!entry) {
        error = c + " has no entry point " TREX_SPM_PLUGIN_ENTRY;
        continue;
      }
      api = entry();
      return;
    }
  });
  if (!api) throw Error(ExitCode::kInput, "SentencePiece support unavailable: " + error);
  return *api;
}

void append_to_string(void* ctx, const char* s, size_t n) { static_cast<std::string*>(ctx)->append(s, n); }

// One SentencePiece model, through the plugin.
class SpModel {
 public:
  SpModel(const std::filesystem::path& root, const std::filesystem::path& file) : api_(plugin()), file_(file.string()) {
    const OpenFile f = open_regular_file_in(root, file, kMaxSpmModelBytes, "a SentencePiece model");
    const std::string bytes = f.read_all();
    std::string err;
    if (bytes.empty()) throw InputError(file_, "not a valid SentencePiece model (empty file)");
    model_ = api_.load(bytes.data(), bytes.size(), append_to_string, &err);
    if (!model_) throw InputError(file_, "not a valid SentencePiece model (" + clip_for_message(err, 200) + ")");
    size_ = api_.piece_size(model_);
    if (size_ <= 0) throw InputError(file_, "SentencePiece model has no pieces");
  }
  ~SpModel() { api_.free(model_); }
  SpModel(const SpModel&) = delete;
  SpModel& operator=(const SpModel&) = delete;

  int GetPieceSize() const { return size_; }
  std::string IdToPiece(int id) const {
    std::string out;
    api_.id_to_piece(model_, id, append_to_string, &out);
    return out;
  }
  struct Piece {
    std::string piece;
    uint32_t id, begin, end;
  };
  std::vector<Piece> Encode(const std::string& text) const {
    struct Ctx {
      std::vector<Piece> pieces;
      std::string err;
    } ctx;
    auto on_piece = [](void* c, const char* p, size_t n, uint32_t id, uint32_t b, uint32_t e) {
      static_cast<Ctx*>(c)->pieces.push_back({std::string(p, n), id, b, e});
    };
    auto on_err = [](void* c, const char* s, size_t n) { static_cast<Ctx*>(c)->err.append(s, n); };
    if (api_.encode(model_, text.data(), text.size(), on_piece, on_err, &ctx) != 0)
      throw InputError(file_, "SentencePiece encoding failed: " + ctx.err);
    return std::move(ctx.pieces);
  }
  std::string DecodePieces(const std::vector<std::string>& pieces) const {
    std::vector<const char*> ptrs;
    std::vector<size_t> lens;
    for (const auto& p : pieces) {
      ptrs.push_back(p.data());
      lens.push_back(p.size());
    }
    std::string out;
    api_.decode_pieces(model_, ptrs.data(), lens.data(), pieces.size(), append_to_string, &out);
    return out;
  }

 private:
  const TrexSpmApi& api_;
  std::string file_;
  void* model_ = nullptr;
  int size_ = 0;
};

std::unique_ptr<SpModel> load_model(const std::filesystem::path& root, const std::filesystem::path& file) {
  return std::make_unique<SpModel>(root, file);
}

bool exists_file(const std::filesystem::path& p) {
  std::error_code ec;
  return std::filesystem::exists(p, ec);
}

// Python's str.strip(): Unicode whitespace at both ends.
std::string strip(const std::string& s) {
  size_t b = 0, e = s.size();
  while (b < e) {
    size_t i = b;
    if (!is_whitespace(next_char(s, i))) break;
    b = i;
  }
  while (e > b) {
    size_t start = e - 1;
    while (start > b && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) --start;
    size_t i = start;
    if (!is_whitespace(next_char(s, i))) break;
    e = start;
  }
  return s.substr(b, e - b);
}

}  // namespace

struct SpmTokenizer::State {
  enum class Style { kT5, kMarian, kLlama } style = Style::kT5;
  bool add_bos = false, add_eos = true;
  int64_t bos_id = -1;
  std::string source_file;
  std::unique_ptr<SpModel> source, target;
  // Marian: vocab.json; T5: the model's pieces, then <extra_id_N>.
  std::unordered_map<std::string, int64_t> token_ids;
  std::vector<std::string> id_tokens;
  int64_t unk_id = 0, eos_id = 1;
  std::vector<std::string> specials;  // split out of the text, longest first
  std::unordered_set<int64_t> special_ids;

  void add_special(const std::string& tok) {
    auto it = token_ids.find(tok);
    if (it == token_ids.end()) return;
    specials.push_back(tok);
    special_ids.insert(it->second);
  }
};

SpmTokenizer::SpmTokenizer(std::unique_ptr<State> s) : s_(std::move(s)) {}
SpmTokenizer::~SpmTokenizer() = default;

std::unique_ptr<SpmTokenizer> SpmTokenizer::load_folder(const std::filesystem::path& dir) {
  const std::filesystem::path root = checkpoint_root(dir);
  auto s = std::make_unique<State>();
  if (exists_file(dir / "source.spm")) {
    s->style = State::Style::kMarian;
    const auto src = dir / "source.spm", tgt = dir / "target.spm", vocab = dir / "vocab.json";
    s->source_file = src.string();
    s->source = load_model(root, src);
    s->target = exists_file(tgt) ? load_model(root, tgt) : nullptr;
    if (!s->target) throw InputError(tgt.string(), "missing (a Marian folder needs source.spm and target.spm)");
    if (!exists_file(vocab)) throw InputError(vocab.string(), "missing (a Marian folder needs vocab.json)");
    const nlohmann::json v = read_json_file(vocab);
    if (!v.is_object()) throw InputError(vocab.string(), "not a JSON object of token -> id");
    for (const auto& [tok, id] : v.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= (int64_t{1} << 24))
        throw InputError(vocab.string(), "id of token '" + clip_for_message(tok) + "' is not an integer in [0, 2^24)");
      const auto i = id.get<int64_t>();
      s->token_ids[tok] = i;
      if (static_cast<size_t>(i) >= s->id_tokens.size()) s->id_tokens.resize(static_cast<size_t>(i) + 1);
      s->id_tokens[static_cast<size_t>(i)] = tok;
    }
    for (const char* need : {"<unk>", "</s>"})
      if (!s->token_ids.count(need)) throw InputError(vocab.string(), std::string("has no '") + need + "' token");
    s->unk_id = s->token_ids["<unk>"];
    s->eos_id = s->token_ids["</s>"];
    for (const char* t : {"</s>", "<unk>", "<pad>"}) s->add_special(t);
  } else if (exists_file(dir / "spiece.model")) {
    const auto model = dir / "spiece.model";
    s->source_file = model.string();
    s->source = load_model(root, model);
    const int n = s->source->GetPieceSize();
    int64_t extra_ids = 100;
    if (exists_file(dir / "tokenizer_config.json")) {
      const nlohmann::json c = read_json_file(dir / "tokenizer_config.json");
      if (c.is_object() && c.contains("extra_ids") && c["extra_ids"].is_number_integer())
        extra_ids = std::clamp<int64_t>(c["extra_ids"].get<int64_t>(), 0, 100000);
    }
    s->id_tokens.resize(static_cast<size_t>(n + extra_ids));
    for (int i = 0; i < n; ++i) {
      s->id_tokens[static_cast<size_t>(i)] = s->source->IdToPiece(i);
      s->token_ids.emplace(s->id_tokens[static_cast<size_t>(i)], i);
    }
    for (int64_t k = 0; k < extra_ids; ++k) {
      const std::string tok = "<extra_id_" + std::to_string(k) + ">";
      const int64_t id = n + extra_ids - 1 - k;
      s->id_tokens[static_cast<size_t>(id)] = tok;
      s->token_ids[tok] = id;
    }
    for (const char* need : {"</s>", "<unk>"})
      if (!s->token_ids.count(need)) throw InputError(model.string(), std::string("has no '") + need + "' piece");
    s->unk_id = s->token_ids["<unk>"];
    s->eos_id = s->token_ids["</s>"];
    for (const char* t : {"</s>", "<unk>", "<pad>"}) s->add_special(t);
    for (int64_t k = 0; k < extra_ids; ++k) s->add_special("<extra_id_" + std::to_string(k) + ">");
  } else if (exists_file(dir / "tokenizer.model")) {
    const auto model = dir / "tokenizer.model";
    s->style = State::Style::kLlama;
    s->source_file = model.string();
    s->source = load_model(root, model);
    const int n = s->source->GetPieceSize();
    s->id_tokens.resize(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      s->id_tokens[static_cast<size_t>(i)] = s->source->IdToPiece(i);
      s->token_ids.emplace(s->id_tokens[static_cast<size_t>(i)], i);
    }
    for (const char* need : {"<s>", "</s>", "<unk>"})
      if (!s->token_ids.count(need)) throw InputError(model.string(), std::string("has no '") + need + "' piece");
    s->unk_id = s->token_ids["<unk>"];
    s->eos_id = s->token_ids["</s>"];
    s->bos_id = s->token_ids["<s>"];
    s->add_bos = true;  // LlamaTokenizer's defaults, or tokenizer_config.json's
    s->add_eos = false;
    if (exists_file(dir / "tokenizer_config.json")) {
      const nlohmann::json c = read_json_file(dir / "tokenizer_config.json");
      if (c.is_object() && c.contains("add_bos_token") && c["add_bos_token"].is_boolean())
        s->add_bos = c["add_bos_token"].get<bool>();
      if (c.is_object() && c.contains("add_eos_token") && c["add_eos_token"].is_boolean())
        s->add_eos = c["add_eos_token"].get<bool>();
    }
    for (const char* t : {"<s>", "</s>", "<unk>"}) s->add_special(t);
  } else {
    return nullptr;
  }
  std::stable_sort(s->specials.begin(), s->specials.end(),
                   [](const std::string& a, const std::string& b) { return a.size() > b.size(); });
  return std::unique_ptr<SpmTokenizer>(new SpmTokenizer(std::move(s)));
}

Encoding SpmTokenizer::encode(std::string_view text, std::optional<std::string_view> pair, bool add_special_tokens,
                              OffsetUnit unit) const {
  const State& s = *s_;
  Encoding e;
  auto push = [&](int64_t id, const std::string& tok, size_t b, size_t en, bool special, int64_t word, int64_t seq) {
    e.ids.push_back(id);
    e.tokens.push_back(tok);
    e.offsets.emplace_back(b, en);
    e.special_tokens_mask.push_back(special ? 1 : 0);
    e.word_ids.push_back(word);
    e.sequence_ids.push_back(seq);
  };
  auto encode_one = [&](std::string_view t, int64_t seq) {
    if (find_invalid_utf8(t) != std::string_view::npos) throw InputError("input text is not valid UTF-8");
    int64_t word = -1;
    auto to_unit = [&](size_t byte) { return unit == OffsetUnit::kChar ? count_chars(t.substr(0, byte)) : byte; };
    auto encode_segment = [&](size_t b, size_t en) {
      if (b >= en) return;
      std::string seg(t.substr(b, en - b));
      // MarianTokenizer.remove_language_code: a text starting with ">>" has its code, up to the first "<<", cut
      // off as a token of its own.
      size_t cut = 0;
      if (s.style == State::Style::kMarian && seg.rfind(">>", 0) == 0) {
        const size_t q = seg.find("<<");
        if (q != std::string::npos) {
          cut = q + 2;
          const std::string code = seg.substr(0, cut);
          auto it = s.token_ids.find(code);
          push(it == s.token_ids.end() ? s.unk_id : it->second, code, to_unit(b), to_unit(b + cut), false, ++word,
               seq);
          seg.erase(0, cut);
        }
      }
      for (const auto& p : s.source->Encode(seg)) {
        int64_t id;
        if (s.style == State::Style::kMarian) {
          auto it = s.token_ids.find(p.piece);
          id = it == s.token_ids.end() ? s.unk_id : it->second;
        } else {
          id = static_cast<int64_t>(p.id);
        }
        if (word < 0 || p.piece.rfind(kSpaceSymbol, 0) == 0) ++word;
        const size_t pb = std::min<size_t>(p.begin, seg.size()), pe = std::max(pb, std::min<size_t>(p.end, seg.size()));
        push(id, p.piece, to_unit(b + cut + pb), to_unit(b + cut + pe), false, word, seq);
      }
    };
    // Split special tokens out (leftmost, longest first).
    size_t last = 0, i = 0;
    while (i < t.size()) {
      const std::string* hit = nullptr;
      if (t[i] == '<')
        for (const auto& sp : s.specials)
          if (t.compare(i, sp.size(), sp) == 0) {
            hit = &sp;
            break;
          }
      if (!hit) {
        ++i;
        continue;
      }
      encode_segment(last, i);
      push(s.token_ids.at(*hit), *hit, to_unit(i), to_unit(i + hit->size()), true, -1, seq);
      i += hit->size();
      last = i;
    }
    encode_segment(last, t.size());
    if (add_special_tokens && s.add_eos) push(s.eos_id, s.id_tokens[static_cast<size_t>(s.eos_id)], 0, 0, true, -1, -1);
  };
  auto add_bos = [&] {
    if (!add_special_tokens || !s.add_bos) return;
    push(s.bos_id, s.id_tokens[static_cast<size_t>(s.bos_id)], 0, 0, true, -1, -1);
  };
  add_bos();
  encode_one(text, 0);
  if (pair) {
    add_bos();
    encode_one(*pair, 1);
  }
  e.type_ids.assign(e.ids.size(), 0);
  e.attention_mask.assign(e.ids.size(), 1);
  return e;
}

// transformers' _decode: ids to tokens (special ones dropped when asked); tokens run through the tokenizer's
// convert_tokens_to_string, except T5's <extra_id_N> (ids past the model's pieces, "legacy added tokens"), which
// stand alone; the parts joined with spaces.
std::string SpmTokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  const State& s = *s_;
  const bool marian = s.style == State::Style::kMarian;
  const SpModel& sp = marian ? *s.target : *s.source;
  // convert_tokens_to_string of MarianTokenizer / T5Tokenizer.
  auto tokens_to_string = [&](std::vector<std::string> tokens) {
    std::vector<std::string> sub;
    std::string out;
    if (s.style == State::Style::kLlama) {  // LlamaTokenizer.convert_tokens_to_string (legacy, add_prefix_space)
      if (!tokens.empty() && tokens[0].rfind(kSpaceSymbol, 0) == 0) tokens[0].erase(0, kSpaceSymbol.size());
      bool prev_special = false;
      for (size_t i = 0; i < tokens.size(); ++i) {
        const std::string& tok = tokens[i];
        auto it = s.token_ids.find(tok);
        if (it != s.token_ids.end() && s.special_ids.count(it->second) > 0) {
          if (!prev_special && i != 0) out += " ";
          out += sp.DecodePieces(sub) + tok;
          prev_special = true;
          sub.clear();
        } else {
          if (prev_special && i == 1 && tok.rfind(kSpaceSymbol, 0) != 0) out += " ";
          sub.push_back(tok);
          prev_special = false;
        }
      }
      return out + sp.DecodePieces(sub);
    }
    if (!marian && !tokens.empty() && tokens[0].rfind(kSpaceSymbol, 0) == 0)
      tokens[0].erase(0, kSpaceSymbol.size());  // T5's add_prefix_space
    bool prev_special = false;
    for (const auto& tok : tokens) {
      auto it = s.token_ids.find(tok);
      const bool special = it != s.token_ids.end() && s.special_ids.count(it->second) > 0;
      if (!special) {
        sub.push_back(tok);
        prev_special = false;
        continue;
      }
      if (marian) {
        out += sp.DecodePieces(sub) + tok + " ";
      } else {
        if (!prev_special) out += " ";
        out += sp.DecodePieces(sub) + tok;
        prev_special = true;
      }
      sub.clear();
    }
    out += sp.DecodePieces(sub);
    if (marian) {
      std::string r;
      for (size_t k = 0; k < out.size();) {
        if (out.compare(k, kSpaceSymbol.size(), kSpaceSymbol) == 0) {
          r += ' ';
          k += kSpaceSymbol.size();
        } else {
          r += out[k++];
        }
      }
      out = std::move(r);
    }
    return strip(out);
  };
  const auto n_pieces = static_cast<int64_t>(s.source->GetPieceSize());
  std::vector<std::string> parts, current;
  for (int64_t id : ids) {
    if (id < 0 || static_cast<size_t>(id) >= s.id_tokens.size()) continue;
    if (skip_special_tokens && s.special_ids.count(id) > 0) continue;
    const std::string& tok = s.id_tokens[static_cast<size_t>(id)];
    if (!marian && id >= n_pieces) {
      if (!current.empty()) {
        std::string part = tokens_to_string(std::move(current));
        if (!part.empty()) parts.push_back(std::move(part));
        current.clear();
      }
      parts.push_back(tok);
    } else {
      current.push_back(tok);
    }
  }
  if (!current.empty()) parts.push_back(tokens_to_string(std::move(current)));
  std::string text;
  for (size_t k = 0; k < parts.size(); ++k) text += (k ? " " : "") + parts[k];
  return text;
}

std::optional<int64_t> SpmTokenizer::token_to_id(std::string_view token) const {
  auto it = s_->token_ids.find(std::string(token));
  if (it == s_->token_ids.end()) return std::nullopt;
  return it->second;
}

std::string SpmTokenizer::id_to_token(int64_t id) const {
  if (id < 0 || static_cast<size_t>(id) >= s_->id_tokens.size()) return "";
  return s_->id_tokens[static_cast<size_t>(id)];
}

size_t SpmTokenizer::vocab_size() const { return s_->id_tokens.size(); }

}  // namespace trex::tokenizers
