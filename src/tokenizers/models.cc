// Models of tokenizer.json: WordLevel (whole-word lookup), WordPiece (greedy longest match), BPE (ranked merges; byte_fallback, fuse_unk,
// subword prefix / end-of-word suffix), Unigram (Viterbi best path; byte_fallback).
#include <algorithm>
#include <cstdio>
#include <limits>
#include <mutex>
#include <queue>
#include <unordered_map>

#include "tokenizers/components.h"
#include "util/error.h"

namespace trex::tokenizers::detail {
namespace {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
using Vocab = std::unordered_map<std::string, uint32_t, StringHash, std::equal_to<>>;

// Vocabulary with its reverse table.
struct VocabTable {
  Vocab to_id;
  std::vector<std::string> to_token;
  void add(const std::string& token, uint32_t id) {
    to_id[token] = id;
    if (to_token.size() <= id) to_token.resize(id + 1);
    to_token[id] = token;
  }
  std::optional<uint32_t> find(std::string_view t) const {
    auto it = to_id.find(t);
    if (it == to_id.end()) return std::nullopt;
    return it->second;
  }
  const std::string* token(uint32_t id) const { return id < to_token.size() ? &to_token[id] : nullptr; }
  // byte_fallback: the ids of the <0xXX> tokens spelling `piece` byte by byte; false when one is missing.
  bool byte_tokens(std::string_view piece, std::vector<uint32_t>* ids) const {
    ids->clear();
    char name[8];
    for (unsigned char b : piece) {
      std::snprintf(name, sizeof name, "<0x%02X>", b);
      auto id = find(name);
      if (!id) return false;
      ids->push_back(*id);
    }
    return true;
  }
};

VocabTable read_vocab_map(const Json& v, const LoadContext& ctx) {
  if (!v.is_object()) ctx.fail("model.vocab must be an object of token -> id");
  VocabTable t;
  for (auto it = v.begin(); it != v.end(); ++it) t.add(it.key(), it.value().get<uint32_t>());
  return t;
}

std::string opt_string(const Json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return "";
  return j[key].get<std::string>();
}

// Each pre-tokenized word is one token: its vocabulary id, else unk_token's (an error when that is missing too,
// as the reference raises).
class WordLevel : public Model {
 public:
  WordLevel(const Json& j, const LoadContext& ctx) : vocab_(read_vocab_map(j.at("vocab"), ctx)) {
    unk_ = opt_string(j, "unk_token");
    unk_id_ = vocab_.find(unk_);
    file_ = ctx.file;
  }
  void tokenize(const std::string& w, std::vector<Token>& out) const override {
    if (auto id = vocab_.find(w)) {
      out.push_back({*id, w, 0, w.size()});
      return;
    }
    if (!unk_id_) throw InputError(file_, "WordLevel: '" + w + "' is not in the vocabulary and unk_token '" +
                                                         unk_ + "' is missing from it");
    out.push_back({*unk_id_, unk_, 0, w.size()});
  }
  std::optional<uint32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.to_id.size(); }

 private:
  VocabTable vocab_;
  std::string unk_, file_;
  std::optional<uint32_t> unk_id_;
};

class WordPiece : public Model {
 public:
  WordPiece(const Json& j, const LoadContext& ctx) : vocab_(read_vocab_map(j.at("vocab"), ctx)) {
    unk_ = opt_string(j, "unk_token");
    prefix_ = j.contains("continuing_subword_prefix") && !j["continuing_subword_prefix"].is_null()
                  ? j["continuing_subword_prefix"].get<std::string>()
                  : "##";
    max_chars_ = j.value("max_input_chars_per_word", size_t{100});
    auto id = vocab_.find(unk_);
    if (!id) ctx.fail("WordPiece unk_token '" + unk_ + "' is not in the vocabulary");
    unk_id_ = *id;
  }
  void tokenize(const std::string& w, std::vector<Token>& out) const override {
    if (count_chars(w) > max_chars_) {
      out.push_back({unk_id_, unk_, 0, w.size()});
      return;
    }
    const size_t first = out.size();
    std::string buf;
    size_t start = 0;
    while (start < w.size()) {
      size_t end = w.size();
      std::optional<uint32_t> found;
      while (start < end) {
        std::string_view sub(w.data() + start, end - start);
        if (start > 0) {
          buf.assign(prefix_);
          buf.append(sub);
          found = vocab_.find(buf);
        } else {
          found = vocab_.find(sub);
        }
        if (found) break;
        --end;
        while (end > start && (static_cast<unsigned char>(w[end]) & 0xC0) == 0x80) --end;
      }
      if (!found) {
        out.resize(first);
        out.push_back({unk_id_, unk_, 0, w.size()});
        return;
      }
      out.push_back({*found, *vocab_.token(*found), start, end});
      start = end;
    }
  }
  std::optional<uint32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.to_id.size(); }

 private:
  VocabTable vocab_;
  std::string unk_, prefix_;
  uint32_t unk_id_ = 0;
  size_t max_chars_;
};

class BPE : public Model {
 public:
  BPE(const Json& j, const LoadContext& ctx) : vocab_(read_vocab_map(j.at("vocab"), ctx)) {
    if (j.contains("dropout") && !j["dropout"].is_null() && j["dropout"].get<double>() != 0.0)
      ctx.fail("BPE dropout is random; only null/0 is supported");
    unk_ = opt_string(j, "unk_token");
    prefix_ = opt_string(j, "continuing_subword_prefix");
    suffix_ = opt_string(j, "end_of_word_suffix");
    fuse_unk_ = j.value("fuse_unk", false);
    byte_fallback_ = j.value("byte_fallback", false);
    ignore_merges_ = j.value("ignore_merges", false);
    const Json& merges = j.at("merges");
    uint32_t rank = 0;
    for (const auto& m : merges) {
      std::string a, b;
      if (m.is_string()) {
        const std::string s = m.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos) ctx.fail("BPE merge '" + s + "' is not 'left right'");
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (m.is_array() && m.size() == 2) {
        a = m[0].get<std::string>();
        b = m[1].get<std::string>();
      } else {
        ctx.fail("BPE merge must be a string 'a b' or a pair [a, b], got " + m.dump());
      }
      auto ia = vocab_.find(a), ib = vocab_.find(b);
      if (!ia || !ib) ctx.fail("BPE merge '" + a + " " + b + "': a part is not in the vocabulary");
      std::string merged = a + (prefix_.empty() || b.compare(0, prefix_.size(), prefix_) != 0 ? b : b.substr(prefix_.size()));
      auto im = vocab_.find(merged);
      if (!im) ctx.fail("BPE merge '" + a + " " + b + "': '" + merged + "' is not in the vocabulary");
      merges_.emplace(key(*ia, *ib), std::pair<uint32_t, uint32_t>{rank++, *im});
    }
    if (!unk_.empty()) unk_id_ = vocab_.find(unk_);
  }

  void tokenize(const std::string& w, std::vector<Token>& out) const override {
    if (w.empty()) return;
    if (ignore_merges_) {
      if (auto id = vocab_.find(w)) {
        out.push_back({*id, w, 0, w.size()});
        return;
      }
    }
    {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      auto it = cache_.find(w);
      if (it != cache_.end()) {
        emit(it->second, out);
        return;
      }
    }
    std::vector<Sym> syms = merge_word(w);
    emit(syms, out);
    if (w.size() < 256) {
      std::lock_guard<std::mutex> lock(cache_mutex_);
      if (cache_.size() >= kCacheCapacity) cache_.clear();
      cache_.emplace(w, std::move(syms));
    }
  }
  std::optional<uint32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return vocab_.to_id.size(); }

 private:
  struct Sym {
    uint32_t id;
    uint32_t begin, len;  // bytes of the word
    int32_t prev, next;
  };
  static uint64_t key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }
  static constexpr size_t kCacheCapacity = 10000;

  void emit(const std::vector<Sym>& syms, std::vector<Token>& out) const {
    for (const Sym& s : syms) out.push_back({s.id, *vocab_.token(s.id), s.begin, s.begin + s.len});
  }

  std::vector<Sym> merge_word(const std::string& w) const {
    std::vector<Sym> syms;
    syms.reserve(w.size());
    auto add = [&](uint32_t id, size_t begin, size_t len) {
      syms.push_back({id, static_cast<uint32_t>(begin), static_cast<uint32_t>(len), 0, 0});
    };
    struct PendingUnk {
      bool active = false;
      uint32_t id = 0;
      size_t begin = 0, len = 0;
    } unk;  // unknown characters waiting to be emitted (fused when fuse_unk)
    std::string s;
    size_t i = 0;
    while (i < w.size()) {
      const size_t start = i;
      next_char(w, i);
      s.assign(w, start, i - start);
      if (start > 0 && !prefix_.empty()) s.insert(0, prefix_);
      if (i == w.size() && !suffix_.empty()) s += suffix_;
      if (auto id = vocab_.find(s)) {
        if (unk.active) {
          add(unk.id, unk.begin, unk.len);
          unk.active = false;
        }
        add(*id, start, i - start);
        continue;
      }
      if (byte_fallback_) {
        // The reference looks the bytes of the decorated piece up (prefix/suffix included).
        std::vector<uint32_t> ids;
        if (vocab_.byte_tokens(s, &ids)) {
          size_t pos = start;
          for (uint32_t id : ids) {
            // One byte each, within the character (offsets are clamped to the word like the reference's).
            add(id, std::min(pos, w.size() - 1), 1);
            pos = std::min(pos + 1, i);
          }
          continue;
        }
      }
      if (unk_id_) {
        if (unk.active && fuse_unk_) {
          unk.len += i - start;
        } else {
          if (unk.active) add(unk.id, unk.begin, unk.len);
          unk = {true, *unk_id_, start, i - start};
        }
      }
    }
    if (unk.active) add(unk.id, unk.begin, unk.len);
    merge_all(syms);
    return syms;
  }

  void merge_all(std::vector<Sym>& syms) const {
    const int32_t n = static_cast<int32_t>(syms.size());
    for (int32_t k = 0; k < n; ++k) {
      syms[static_cast<size_t>(k)].prev = k - 1;
      syms[static_cast<size_t>(k)].next = k + 1 < n ? k + 1 : -1;
    }
    struct Cand {
      uint32_t rank;
      int32_t pos;
      uint32_t new_id;
      bool operator>(const Cand& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
    };
    std::priority_queue<Cand, std::vector<Cand>, std::greater<Cand>> q;
    for (int32_t k = 0; k + 1 < n; ++k) {
      auto it = merges_.find(key(syms[static_cast<size_t>(k)].id, syms[static_cast<size_t>(k + 1)].id));
      if (it != merges_.end()) q.push({it->second.first, k, it->second.second});
    }
    while (!q.empty()) {
      const Cand top = q.top();
      q.pop();
      Sym& cur = syms[static_cast<size_t>(top.pos)];
      if (cur.len == 0 || cur.next == -1) continue;
      Sym& right = syms[static_cast<size_t>(cur.next)];
      auto it = merges_.find(key(cur.id, right.id));
      if (it == merges_.end() || it->second.second != top.new_id) continue;
      cur.id = top.new_id;
      cur.len += right.len;
      const int32_t right_next = right.next;
      right.len = 0;
      cur.next = right_next;
      if (right_next >= 0) syms[static_cast<size_t>(right_next)].prev = top.pos;
      if (cur.prev >= 0) {
        auto p = merges_.find(key(syms[static_cast<size_t>(cur.prev)].id, cur.id));
        if (p != merges_.end()) q.push({p->second.first, cur.prev, p->second.second});
      }
      if (right_next >= 0) {
        auto p = merges_.find(key(cur.id, syms[static_cast<size_t>(right_next)].id));
        if (p != merges_.end()) q.push({p->second.first, top.pos, p->second.second});
      }
    }
    std::vector<Sym> kept;
    kept.reserve(syms.size());
    for (const Sym& s : syms)
      if (s.len > 0) kept.push_back(s);
    syms = std::move(kept);
  }

  VocabTable vocab_;
  std::unordered_map<uint64_t, std::pair<uint32_t, uint32_t>> merges_;  // (a, b) -> (rank, merged id)
  std::string unk_, prefix_, suffix_;
  std::optional<uint32_t> unk_id_;
  bool fuse_unk_ = false, byte_fallback_ = false, ignore_merges_ = false;
  mutable std::mutex cache_mutex_;
  mutable std::unordered_map<std::string, std::vector<Sym>> cache_;
};

// A byte trie over the Unigram pieces for common-prefix search.
class Trie {
 public:
  Trie() : nodes_(1) {}
  void insert(std::string_view s, uint32_t id) {
    uint32_t n = 0;
    for (unsigned char b : s) {
      auto& kids = nodes_[n].kids;
      auto it = std::lower_bound(kids.begin(), kids.end(), b, [](const auto& e, unsigned char x) { return e.first < x; });
      if (it == kids.end() || it->first != b) {
        const uint32_t fresh = static_cast<uint32_t>(nodes_.size());
        it = kids.insert(it, {b, fresh});
        nodes_.emplace_back();
      }
      n = it->second;
    }
    nodes_[n].id = static_cast<int64_t>(id);
  }
  // Calls f(length, id) for every piece that is a prefix of s, shortest first.
  template <typename F>
  void prefixes(std::string_view s, F&& f) const {
    uint32_t n = 0;
    for (size_t i = 0; i < s.size(); ++i) {
      const auto& kids = nodes_[n].kids;
      const unsigned char b = static_cast<unsigned char>(s[i]);
      auto it = std::lower_bound(kids.begin(), kids.end(), b, [](const auto& e, unsigned char x) { return e.first < x; });
      if (it == kids.end() || it->first != b) return;
      n = it->second;
      if (nodes_[n].id >= 0) f(i + 1, static_cast<uint32_t>(nodes_[n].id));
    }
  }

 private:
  struct Node {
    std::vector<std::pair<unsigned char, uint32_t>> kids;
    int64_t id = -1;
  };
  std::vector<Node> nodes_;
};

class Unigram : public Model {
 public:
  Unigram(const Json& j, const LoadContext& ctx) {
    const Json& v = j.at("vocab");
    if (!v.is_array()) ctx.fail("Unigram vocab must be a list of [piece, score]");
    uint32_t id = 0;
    for (const auto& e : v) {
      const std::string piece = e.at(0).get<std::string>();
      const double score = e.at(1).get<double>();
      vocab_.add(piece, id);
      scores_.push_back(score);
      trie_.insert(piece, id);
      min_score_ = std::min(min_score_, score);
      ++id;
    }
    if (j.contains("unk_id") && !j["unk_id"].is_null()) {
      unk_id_ = j["unk_id"].get<uint32_t>();
      if (*unk_id_ >= id) ctx.fail("Unigram unk_id is outside the vocabulary");
    }
    byte_fallback_ = j.value("byte_fallback", false);
  }

  void tokenize(const std::string& s, std::vector<Token>& out) const override {
    if (s.empty()) return;
    struct Best {
      double score = 0;
      int64_t start = -1;
      uint32_t id = 0;
    };
    const size_t n = s.size();
    std::vector<Best> best(n + 1);
    const double unk_score = min_score_ - 10.0;
    size_t pos = 0;
    while (pos < n) {
      size_t next = pos;
      next_char(s, next);
      const size_t mblen = next - pos;
      const double here = best[pos].score;
      bool single = false;
      trie_.prefixes(std::string_view(s).substr(pos), [&](size_t len, uint32_t id) {
        Best& t = best[pos + len];
        const double cand = scores_[id] + here;
        if (t.start < 0 || cand > t.score) t = {cand, static_cast<int64_t>(pos), id};
        if (len == mblen) single = true;
      });
      if (!single) {
        if (!unk_id_) throw InputError("Unigram model has no unk_id but the text has a character not in the vocabulary");
        Best& t = best[pos + mblen];
        const double cand = unk_score + here;
        if (t.start < 0 || cand > t.score) t = {cand, static_cast<int64_t>(pos), *unk_id_};
      }
      pos = next;
    }
    // Back-track; consecutive unknown pieces are fused.
    std::vector<std::pair<size_t, size_t>> pieces;  // [begin, end)
    std::vector<bool> is_unk;
    size_t end = n;
    while (end > 0) {
      const Best& b = best[end];
      const size_t start = static_cast<size_t>(b.start);
      const bool unk = unk_id_ && b.id == *unk_id_;
      if (unk && !is_unk.empty() && is_unk.back()) pieces.back().first = start;
      else {
        pieces.push_back({start, end});
        is_unk.push_back(unk);
      }
      end = start;
    }
    for (size_t k = pieces.size(); k-- > 0;) {
      const auto [b, e] = pieces[k];
      std::string piece = s.substr(b, e - b);
      if (auto id = vocab_.find(piece)) {
        out.push_back({*id, std::move(piece), b, e});
        continue;
      }
      if (byte_fallback_) {
        std::vector<uint32_t> ids;
        if (vocab_.byte_tokens(piece, &ids)) {
          for (uint32_t id : ids) out.push_back({id, *vocab_.token(id), b, e});
          continue;
        }
      }
      out.push_back({*unk_id_, std::move(piece), b, e});
    }
  }
  std::optional<uint32_t> token_to_id(std::string_view t) const override { return vocab_.find(t); }
  const std::string* id_to_token(uint32_t id) const override { return vocab_.token(id); }
  size_t vocab_size() const override { return scores_.size(); }

 private:
  VocabTable vocab_;
  std::vector<double> scores_;
  Trie trie_;
  double min_score_ = std::numeric_limits<double>::infinity();
  std::optional<uint32_t> unk_id_;
  bool byte_fallback_ = false;
};

}  // namespace

std::unique_ptr<Model> make_model(const Json& j, const LoadContext& ctx) {
  if (j.is_null()) ctx.fail("no model");
  std::string type = j.contains("type") ? json_type(j) : "";
  if (type.empty()) {  // older files leave the type out
    if (j.contains("merges")) type = "BPE";
    else if (j.contains("vocab") && j["vocab"].is_array()) type = "Unigram";
    else if (j.contains("continuing_subword_prefix") || j.contains("max_input_chars_per_word")) type = "WordPiece";
  }
  if (type == "WordLevel") return std::make_unique<WordLevel>(j, ctx);
  if (type == "WordPiece") return std::make_unique<WordPiece>(j, ctx);
  if (type == "BPE") return std::make_unique<BPE>(j, ctx);
  if (type == "Unigram") return std::make_unique<Unigram>(j, ctx);
  ctx.fail("unknown model type '" + type + "'");
}

}  // namespace trex::tokenizers::detail
