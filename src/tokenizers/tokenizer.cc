// Tokenizer: reads tokenizer.json, splits added tokens out, runs normalizer → pre-tokenizer → model →
// post-processor, applies truncation and padding, and decodes ids back to text.
#include "tokenizers/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>

#include "tokenizers/components.h"
#include "tokenizers/spm.h"
#include "util/error.h"

namespace trex::tokenizers {

using namespace detail;

void detail::LoadContext::fail(const std::string& problem) const { throw InputError(file, problem); }

std::string detail::json_type(const Json& j) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string()) return "(no type)";
  return j["type"].get<std::string>();
}

namespace {

struct AddedToken {
  uint32_t id;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

// Leftmost-longest matching of a set of strings.
class Matcher {
 public:
  void add(std::string s, size_t index) {
    if (s.empty()) return;
    by_first_[static_cast<unsigned char>(s[0])].push_back({std::move(s), index});
  }
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (const auto& v : by_first_) empty_ &= v.empty();
  }
  bool empty() const { return empty_; }
  // Finds the next match at or after `from`: (begin, end, index).
  bool next(const std::string& s, size_t from, size_t& b, size_t& e, size_t& index) const {
    for (size_t i = from; i < s.size(); ++i) {
      const auto& cands = by_first_[static_cast<unsigned char>(s[i])];
      for (const auto& [str, idx] : cands)
        if (s.compare(i, str.size(), str) == 0) {
          b = i;
          e = i + str.size();
          index = idx;
          return true;
        }
    }
    return false;
  }

 private:
  std::vector<std::pair<std::string, size_t>> by_first_[256];
  bool empty_ = true;
};

enum class Strategy { kLongestFirst, kOnlyFirst, kOnlySecond };
struct Truncation {
  size_t max_length = 0;
  bool left = false;
  Strategy strategy = Strategy::kLongestFirst;
};
struct Padding {
  bool fixed = false;
  size_t length = 0, multiple = 0;
  bool left = false;
  int64_t pad_id = 0, pad_type_id = 0;
  std::string pad_token = "[PAD]";
};

// Whether a post_processor is, or a Sequence holds, TemplateProcessing.
bool has_template(const Json& p) {
  if (json_type(p) == "TemplateProcessing") return true;
  if (json_type(p) == "Sequence" && p.contains("processors"))
    for (const auto& q : p["processors"])
      if (has_template(q)) return true;
  return false;
}

bool is_word_char(char32_t c) { return is_alphanumeric(c) || c == '_'; }

}  // namespace

class TokenizerImpl {
 public:
  TokenizerImpl(const Json& j, const std::string& name) : ctx_{name} {
    if (!j.is_object()) ctx_.fail("not a tokenizer.json object");
    model_ = make_model(j.value("model", Json()), ctx_);
    normalizer_ = make_normalizer(j.value("normalizer", Json()), ctx_);
    pre_tokenizer_ = make_pre_tokenizer(j.value("pre_tokenizer", Json()), ctx_);
    post_processor_ = make_post_processor(j.value("post_processor", Json()), ctx_);
    template_processing_ = has_template(j.value("post_processor", Json()));
    decoder_ = make_decoder(j.value("decoder", Json()), ctx_);
    if (j.contains("added_tokens") && j["added_tokens"].is_array()) {
      for (const auto& t : j["added_tokens"]) {
        AddedToken a;
        a.id = t.at("id").get<uint32_t>();
        a.content = t.at("content").get<std::string>();
        a.single_word = t.value("single_word", false);
        a.lstrip = t.value("lstrip", false);
        a.rstrip = t.value("rstrip", false);
        a.normalized = t.value("normalized", !t.value("special", false));
        a.special = t.value("special", false);
        added_.push_back(a);
      }
      for (size_t k = 0; k < added_.size(); ++k) {
        const AddedToken& a = added_[k];
        if (a.id >= added_by_id_.size()) added_by_id_.resize(a.id + 1, -1);
        added_by_id_[a.id] = static_cast<int64_t>(k);
        added_ids_[a.content] = a.id;
        if (!a.normalized || !normalizer_) {
          (a.normalized ? normalized_matcher_ : raw_matcher_).add(a.content, k);
        } else {
          NormalizedString n(a.content);
          normalizer_->normalize(n);
          normalized_matcher_.add(n.text(), k);
        }
      }
    }
    raw_matcher_.finish();
    normalized_matcher_.finish();
    if (j.contains("truncation") && !j["truncation"].is_null()) {
      const Json& t = j["truncation"];
      truncation_ = Truncation{t.at("max_length").get<size_t>(), t.value("direction", "Right") == "Left",
                               Strategy::kLongestFirst};
      const std::string strategy = t.value("strategy", "LongestFirst");
      if (strategy == "OnlyFirst") truncation_->strategy = Strategy::kOnlyFirst;
      else if (strategy == "OnlySecond") truncation_->strategy = Strategy::kOnlySecond;
      else if (strategy != "LongestFirst") ctx_.fail("unknown truncation strategy '" + strategy + "'");
    }
    if (j.contains("padding") && !j["padding"].is_null()) {
      const Json& p = j["padding"];
      Padding pad;
      const Json& s = p.at("strategy");
      if (s.is_object() && s.contains("Fixed")) {
        pad.fixed = true;
        pad.length = s["Fixed"].get<size_t>();
      } else if (!(s.is_string() && s.get<std::string>() == "BatchLongest")) {
        ctx_.fail("unknown padding strategy " + s.dump());
      }
      pad.left = p.value("direction", "Right") == "Left";
      if (p.contains("pad_to_multiple_of") && !p["pad_to_multiple_of"].is_null())
        pad.multiple = p["pad_to_multiple_of"].get<size_t>();
      pad.pad_id = p.value("pad_id", int64_t{0});
      pad.pad_type_id = p.value("pad_type_id", int64_t{0});
      pad.pad_token = p.value("pad_token", std::string("[PAD]"));
      padding_ = pad;
    }
  }

  Enc tokenize_sequence(std::string_view text, OffsetUnit unit, int64_t type_id = 0) const {
    const size_t bad = find_invalid_utf8(text);
    if (bad != std::string_view::npos)
      throw InputError("input text is not valid UTF-8 (byte " + std::to_string(bad) + ")");
    // 1. added tokens matched on the raw text, 2. the rest normalized, normalized added tokens matched there.
    struct Part {
      NormalizedString s;
      int64_t added = -1;
    };
    std::vector<Part> parts;
    NormalizedString whole(text);
    std::vector<Part> raw;
    split_added(whole, raw_matcher_, raw);
    for (auto& p : raw) {
      if (p.added >= 0) {
        parts.push_back(std::move(p));
        continue;
      }
      if (normalizer_) normalizer_->normalize(p.s);
      split_added(p.s, normalized_matcher_, parts);
    }
    Enc e;
    std::vector<Token> toks;
    std::vector<NormalizedString> pieces;
    int64_t word = 0;  // index of the split (pre-token or added token) a token comes from
    for (auto& p : parts) {
      if (p.added >= 0) {
        const AddedToken& a = added_[static_cast<size_t>(p.added)];
        const Span o = p.s.original_span();
        push(e, a.id, p.s.text(), o.begin, o.end, word++);
        continue;
      }
      pieces.clear();
      pieces.push_back(std::move(p.s));
      if (pre_tokenizer_) pre_tokenizer_->pre_tokenize(pieces);
      for (const auto& piece : pieces) {
        toks.clear();
        model_->tokenize(piece.text(), toks);
        for (auto& t : toks) {
          const Span o = piece.original_of(t.begin, t.end, {static_cast<uint32_t>(t.begin), static_cast<uint32_t>(t.end)});
          push(e, t.id, std::move(t.value), o.begin, o.end, word);
        }
        ++word;
      }
    }
    if (unit == OffsetUnit::kChar) to_char_offsets(text, e);
    e.type_ids.assign(e.ids.size(), type_id);  // the second sequence of a pair is type 1 until post-processing
    e.sequence_ids.assign(e.ids.size(), type_id);
    return e;
  }

  // Truncation (with room for the special tokens), then the post-processor, then the pieces concatenated.
  Enc post_process(Enc a, std::optional<Enc> b, bool add_special, bool apply_truncation = true) const {
    if (truncation_ && apply_truncation) {
      const size_t extra = add_special && post_processor_ ? post_processor_->added_tokens(b.has_value()) : 0;
      if (truncation_->max_length < extra)
        throw InputError("truncation max_length " + std::to_string(truncation_->max_length) +
                         " leaves no room for the " + std::to_string(extra) + " special tokens");
      truncate_pair(a, b, truncation_->max_length - extra);
    }
    std::vector<Enc> encs;
    encs.push_back(std::move(a));
    if (b) encs.push_back(std::move(*b));
    if (post_processor_) post_processor_->process(encs, add_special);
    if (encs.size() == 1) return std::move(encs[0]);
    Enc out;
    for (auto& e : encs) {
      out.ids.insert(out.ids.end(), e.ids.begin(), e.ids.end());
      out.type_ids.insert(out.type_ids.end(), e.type_ids.begin(), e.type_ids.end());
      out.special.insert(out.special.end(), e.special.begin(), e.special.end());
      out.word_ids.insert(out.word_ids.end(), e.word_ids.begin(), e.word_ids.end());
      out.sequence_ids.insert(out.sequence_ids.end(), e.sequence_ids.begin(), e.sequence_ids.end());
      out.tokens.insert(out.tokens.end(), std::make_move_iterator(e.tokens.begin()), std::make_move_iterator(e.tokens.end()));
      out.offsets.insert(out.offsets.end(), e.offsets.begin(), e.offsets.end());
    }
    return out;
  }

  // Overlapping windows over the second sequence (long QA contexts): what the reference gives as an encoding
  // and its overflowing encodings with truncation only_second, max_length and stride.
  std::vector<Enc> windows(const Enc& a, const Enc& b, size_t max_length, size_t stride, bool add_special) const {
    const size_t extra = add_special && post_processor_ ? post_processor_->added_tokens(true) : 0;
    if (max_length < extra + a.ids.size() + 1)
      throw InputError("max_length " + std::to_string(max_length) + " leaves no room for the second sequence (" +
                       std::to_string(a.ids.size()) + " tokens in the first, " + std::to_string(extra) +
                       " special tokens)");
    const size_t budget = max_length - extra - a.ids.size();  // tokens of `b` per window
    std::vector<Enc> out;
    if (b.ids.size() <= budget) {
      out.push_back(post_process(a, b, add_special, false));
      return out;
    }
    if (stride >= budget)
      throw InputError("stride " + std::to_string(stride) + " must be smaller than the " + std::to_string(budget) +
                       " tokens of the second sequence that fit in a window");
    for (size_t start = 0;; start += budget - stride) {
      const size_t stop = std::min(start + budget, b.ids.size());
      Enc part;
      auto take = [&](const auto& from, auto& to) {
        to.assign(from.begin() + static_cast<std::ptrdiff_t>(start), from.begin() + static_cast<std::ptrdiff_t>(stop));
      };
      take(b.ids, part.ids);
      take(b.type_ids, part.type_ids);
      take(b.special, part.special);
      take(b.tokens, part.tokens);
      take(b.offsets, part.offsets);
      take(b.word_ids, part.word_ids);
      take(b.sequence_ids, part.sequence_ids);
      out.push_back(post_process(a, std::move(part), add_special, false));
      if (start > 0 && template_processing_) {
        // As the reference does for overflowing encodings: the template's sequence type ids are not applied
        // (the tokens keep 0 for the first text, 1 for the second).
        Enc& w = out.back();
        for (size_t i = 0; i < w.ids.size(); ++i)
          if (w.sequence_ids[i] >= 0) w.type_ids[i] = w.sequence_ids[i];
      }
      if (stop == b.ids.size()) break;
    }
    return out;
  }

  // The reference's strategies: longest_first shares the budget, only_first / only_second cut one sequence.
  void truncate_pair(Enc& a, std::optional<Enc>& b, size_t max) const {
    const size_t total = a.ids.size() + (b ? b->ids.size() : 0);
    if (total <= max) return;
    const size_t to_remove = total - max;
    const bool left = truncation_->left;
    switch (truncation_->strategy) {
      case Strategy::kLongestFirst: {
        if (!b) {
          truncate(a, max, left);
          return;
        }
        size_t n1 = a.ids.size(), n2 = b->ids.size();
        const bool swap = n1 > n2;
        if (swap) std::swap(n1, n2);
        n2 = n1 > max ? n1 : std::max(n1, max - n1);
        if (n1 + n2 > max) {
          n1 = max / 2;
          n2 = n1 + max % 2;
        }
        if (swap) std::swap(n1, n2);
        truncate(a, std::min(n1, a.ids.size()), left);
        truncate(*b, std::min(n2, b->ids.size()), left);
        return;
      }
      case Strategy::kOnlyFirst:
      case Strategy::kOnlySecond: {
        Enc* target = truncation_->strategy == Strategy::kOnlyFirst ? &a : (b ? &*b : nullptr);
        if (!target) throw InputError("truncation strategy only_second needs a second sequence");
        if (target->ids.size() <= to_remove)
          throw InputError("truncation: the sequence to truncate is shorter than what must be removed");
        truncate(*target, target->ids.size() - to_remove, left);
        return;
      }
    }
  }

  Encoding finish(Enc&& e, size_t pad_to) const {
    Encoding out;
    out.attention_mask.assign(e.ids.size(), 1);
    if (padding_ && pad_to > e.ids.size()) {
      const size_t n = pad_to - e.ids.size();
      const Padding& p = *padding_;
      auto pad = [&](auto& v, auto value) { v.insert(p.left ? v.begin() : v.end(), n, value); };
      pad(e.ids, p.pad_id);
      pad(e.type_ids, p.pad_type_id);
      pad(e.tokens, p.pad_token);
      pad(e.special, int64_t{1});
      pad(e.word_ids, int64_t{-1});
      pad(e.sequence_ids, int64_t{-1});
      pad(e.offsets, std::pair<size_t, size_t>{0, 0});
      pad(out.attention_mask, int64_t{0});
    }
    out.ids = std::move(e.ids);
    out.type_ids = std::move(e.type_ids);
    out.tokens = std::move(e.tokens);
    out.offsets = std::move(e.offsets);
    out.special_tokens_mask = std::move(e.special);
    out.word_ids = std::move(e.word_ids);
    out.sequence_ids = std::move(e.sequence_ids);
    return out;
  }

  size_t pad_length(size_t longest) const {
    if (!padding_) return 0;
    size_t n = padding_->fixed ? padding_->length : longest;
    if (padding_->multiple > 0 && n % padding_->multiple) n += padding_->multiple - n % padding_->multiple;
    return n;
  }

  // Tokens joined as the decoder joins them (with spaces when there is none).
  std::string tokens_to_string(std::vector<std::string> tokens) const {
    if (!decoder_) {
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) out += (i ? " " : "") + tokens[i];
      return out;
    }
    decoder_->decode_chain(tokens);
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }
  void set_truncation(size_t max_length, bool left) {
    if (max_length == 0) truncation_.reset();
    else truncation_ = Truncation{max_length, left, Strategy::kLongestFirst};
  }
  void disable_padding() { padding_.reset(); }

  std::string decode(const std::vector<int64_t>& ids, bool skip_special) const {
    std::vector<std::string> tokens;
    for (int64_t id : ids) {
      if (id < 0) continue;
      const auto uid = static_cast<uint32_t>(id);
      if (uid < added_by_id_.size() && added_by_id_[uid] >= 0) {
        const AddedToken& a = added_[static_cast<size_t>(added_by_id_[uid])];
        if (skip_special && a.special) continue;
        tokens.push_back(a.content);
        continue;
      }
      if (const std::string* t = model_->id_to_token(uid)) tokens.push_back(*t);
    }
    return tokens_to_string(std::move(tokens));
  }

  std::optional<int64_t> token_to_id(std::string_view t) const {
    auto it = added_ids_.find(std::string(t));
    if (it != added_ids_.end()) return it->second;
    if (auto id = model_->token_to_id(t)) return *id;
    return std::nullopt;
  }
  std::string id_to_token(int64_t id) const {
    if (id < 0) return "";
    const auto uid = static_cast<uint32_t>(id);
    if (uid < added_by_id_.size() && added_by_id_[uid] >= 0) return added_[static_cast<size_t>(added_by_id_[uid])].content;
    const std::string* t = model_->id_to_token(uid);
    return t ? *t : "";
  }
  size_t vocab_size() const {
    size_t n = model_->vocab_size();
    for (const auto& a : added_)
      if (!model_->id_to_token(a.id)) ++n;
    return n;
  }

 private:
  template <typename PartT>
  void split_added(NormalizedString& s, const Matcher& m, std::vector<PartT>& out) const {
    if (s.empty()) return;
    if (m.empty()) {
      out.push_back({std::move(s), -1});
      return;
    }
    const std::string& t = s.text();
    size_t last = 0, from = 0, b, e, index;
    std::vector<std::pair<std::pair<size_t, size_t>, int64_t>> found;
    while (m.next(t, from, b, e, index)) {
      from = e;  // matches do not overlap, skipped ones included
      const AddedToken& a = added_[index];
      if (a.single_word) {
        bool start_ok = true, stop_ok = true;
        if (b > 0) {
          size_t k = b - 1;
          while (k > 0 && (static_cast<unsigned char>(t[k]) & 0xC0) == 0x80) --k;
          size_t i = k;
          start_ok = !is_word_char(next_char(t, i));
        }
        if (e < t.size()) {
          size_t i = e;
          stop_ok = !is_word_char(next_char(t, i));
        }
        if (!start_ok || !stop_ok) continue;
      }
      if (b < last) continue;  // overlaps the previous match
      size_t start = b, stop = e;
      if (a.lstrip) {
        size_t k = start;
        while (k > last) {
          size_t p = k - 1;
          while (p > 0 && (static_cast<unsigned char>(t[p]) & 0xC0) == 0x80) --p;
          size_t i = p;
          if (!is_whitespace(next_char(t, i))) break;
          k = p;
        }
        start = std::max(k, last);
      }
      if (a.rstrip) {
        while (stop < t.size()) {
          size_t i = stop;
          if (!is_whitespace(next_char(t, i))) break;
          stop = i;
        }
      }
      if (last < start) found.push_back({{last, start}, -1});
      found.push_back({{start, stop}, static_cast<int64_t>(index)});
      last = stop;
    }
    if (found.empty()) {
      out.push_back({std::move(s), -1});
      return;
    }
    if (last < t.size()) found.push_back({{last, t.size()}, -1});
    for (const auto& [range, idx] : found)
      if (range.first < range.second) out.push_back({s.slice(range.first, range.second), idx});
  }

  static void push(Enc& e, uint32_t id, std::string value, size_t b, size_t end, int64_t word) {
    e.ids.push_back(id);
    e.word_ids.push_back(word);
    e.type_ids.push_back(0);  // set per sequence by tokenize_sequence
    e.special.push_back(0);
    e.tokens.push_back(std::move(value));
    e.offsets.push_back({b, end});
  }

  static void truncate(Enc& e, size_t max, bool left) {
    auto cut = [&](auto& v) {
      if (left) v.erase(v.begin(), v.end() - static_cast<std::ptrdiff_t>(max));
      else v.resize(max);
    };
    cut(e.ids);
    cut(e.type_ids);
    cut(e.special);
    cut(e.word_ids);
    cut(e.sequence_ids);
    cut(e.tokens);
    cut(e.offsets);
  }

  // Byte offsets to char offsets, as the Python package reports them.
  static void to_char_offsets(std::string_view text, Enc& e) {
    std::vector<uint32_t> char_at(text.size() + 1);
    uint32_t c = 0;
    for (size_t i = 0; i < text.size(); ++i) {
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80 && i > 0) ++c;
      char_at[i] = c;
    }
    for (auto& [b, en] : e.offsets) {
      if (b >= text.size()) continue;  // the reference leaves unmappable offsets as they are
      const size_t cb = char_at[b];
      size_t ce;
      if (en < text.size()) ce = char_at[en];
      else ce = (en > 0 ? char_at[std::min(en, text.size()) - 1] : cb) + 1;
      b = cb;
      en = ce;
    }
  }

  LoadContext ctx_;
  std::unique_ptr<Model> model_;
  std::unique_ptr<Normalizer> normalizer_;
  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<PostProcessor> post_processor_;
  bool template_processing_ = false;
  std::unique_ptr<Decoder> decoder_;
  std::vector<AddedToken> added_;
  std::vector<int64_t> added_by_id_;
  std::unordered_map<std::string, uint32_t> added_ids_;
  Matcher raw_matcher_, normalized_matcher_;
  std::optional<Truncation> truncation_;
  std::optional<Padding> padding_;
};

Tokenizer::Tokenizer(std::unique_ptr<TokenizerImpl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(std::unique_ptr<SpmTokenizer> spm) : spm_(std::move(spm)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::filesystem::path& path) {
  std::filesystem::path file = std::filesystem::is_directory(path) ? path / "tokenizer.json" : path;
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    if (std::filesystem::is_directory(path)) {
      if (auto spm = SpmTokenizer::load_folder(path)) return Tokenizer(std::move(spm));
      throw InputError(file.string(), "no tokenizer.json in this folder (nor SentencePiece files: spiece.model, "
                                      "tokenizer.model, or source.spm + target.spm + vocab.json)");
    }
    throw InputError(file.string(), "cannot open");
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return from_json(ss.str(), file.string());
}

Tokenizer Tokenizer::from_json(const std::string& json_text, const std::string& name) {
  Json j;
  try {
    j = Json::parse(json_text);
  } catch (const Json::exception& e) {
    throw InputError(name, std::string("invalid JSON: ") + e.what());
  }
  try {
    return Tokenizer(std::make_unique<TokenizerImpl>(j, name));
  } catch (const Json::exception& e) {
    throw InputError(name, std::string("unexpected content: ") + e.what());
  }
}

Encoding Tokenizer::encode(std::string_view text, bool add_special_tokens, OffsetUnit unit) const {
  if (spm_) return spm_->encode(text, std::nullopt, add_special_tokens, unit);
  Enc e = impl_->post_process(impl_->tokenize_sequence(text, unit), std::nullopt, add_special_tokens);
  const size_t n = impl_->pad_length(e.ids.size());
  return impl_->finish(std::move(e), n);
}

Encoding Tokenizer::encode_pair(std::string_view text, std::string_view pair, bool add_special_tokens,
                                OffsetUnit unit) const {
  if (spm_) return spm_->encode(text, pair, add_special_tokens, unit);
  Enc e = impl_->post_process(impl_->tokenize_sequence(text, unit), impl_->tokenize_sequence(pair, unit, 1),
                              add_special_tokens);
  const size_t n = impl_->pad_length(e.ids.size());
  return impl_->finish(std::move(e), n);
}

std::vector<Encoding> Tokenizer::encode_pair_windows(std::string_view text, std::string_view pair, size_t max_length,
                                                     size_t stride, bool add_special_tokens, OffsetUnit unit) const {
  if (spm_) throw InputError("question/context windows are not supported for SentencePiece model folders");
  std::vector<Enc> parts = impl_->windows(impl_->tokenize_sequence(text, unit), impl_->tokenize_sequence(pair, unit, 1),
                                          max_length, stride, add_special_tokens);
  size_t longest = 0;
  for (const auto& e : parts) longest = std::max(longest, e.ids.size());
  const size_t n = impl_->pad_length(longest);  // the windows are padded alike, as the reference pads overflows
  std::vector<Encoding> out;
  for (auto& e : parts) out.push_back(impl_->finish(std::move(e), n));
  return out;
}

std::vector<Encoding> Tokenizer::encode_batch(const std::vector<std::string>& texts, bool add_special_tokens,
                                              OffsetUnit unit) const {
  if (spm_) {
    std::vector<Encoding> out;
    for (const auto& t : texts) out.push_back(spm_->encode(t, std::nullopt, add_special_tokens, unit));
    return out;
  }
  std::vector<Enc> encs;
  encs.reserve(texts.size());
  size_t longest = 0;
  for (const auto& t : texts) {
    encs.push_back(impl_->post_process(impl_->tokenize_sequence(t, unit), std::nullopt, add_special_tokens));
    longest = std::max(longest, encs.back().ids.size());
  }
  const size_t n = impl_->pad_length(longest);
  std::vector<Encoding> out;
  out.reserve(encs.size());
  for (auto& e : encs) out.push_back(impl_->finish(std::move(e), n));
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return spm_ ? spm_->decode(ids, skip_special_tokens) : impl_->decode(ids, skip_special_tokens);
}
std::string Tokenizer::tokens_to_string(std::vector<std::string> tokens) const {
  if (spm_) throw InputError("joining tokens into words is not supported for SentencePiece model folders");
  return impl_->tokens_to_string(std::move(tokens));
}
// SentencePiece folders apply no truncation or padding (see spm.h): truncation is refused rather than ignored.
void Tokenizer::set_truncation(size_t max_length, bool left) {
  if (spm_) throw InputError("truncation is not supported for SentencePiece model folders");
  impl_->set_truncation(max_length, left);
}
void Tokenizer::disable_padding() {
  if (!spm_) impl_->disable_padding();
}
std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  return spm_ ? spm_->token_to_id(token) : impl_->token_to_id(token);
}
std::string Tokenizer::id_to_token(int64_t id) const { return spm_ ? spm_->id_to_token(id) : impl_->id_to_token(id); }
size_t Tokenizer::vocab_size() const { return spm_ ? spm_->vocab_size() : impl_->vocab_size(); }

}  // namespace trex::tokenizers
