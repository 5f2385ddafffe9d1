// Pre-tokenizers of tokenizer.json: BertPreTokenizer, ByteLevel, Metaspace, Whitespace, WhitespaceSplit, Split,
// Punctuation, Digits, Sequence; and the patterns (literal or ICU regex) that Split and Replace use.
#include <unicode/regex.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <array>

#include "tokenizers/components.h"

namespace trex::tokenizers::detail {

// ---- Pattern ----
struct Pattern::Regex {
  std::unique_ptr<icu::RegexPattern> pattern;
};

// Oniguruma's \s is the White_Space property; ICU's is [\t\n\f\r\p{Z}] (no \v, no U+0085).
static std::string onig_to_icu(const std::string& re) {
  std::string out;
  for (size_t i = 0; i < re.size(); ++i) {
    if (re[i] == '\\' && i + 1 < re.size()) {
      if (re[i + 1] == 's') out += "\\p{White_Space}";
      else if (re[i + 1] == 'S') out += "\\P{White_Space}";
      else out.append(re, i, 2);
      ++i;
    } else {
      out.push_back(re[i]);
    }
  }
  return out;
}

Pattern::Pattern(const Json& j, const LoadContext& ctx) : regex_(nullptr) {
  if (j.contains("String")) {
    literal_ = j["String"].get<std::string>();
    if (literal_.empty()) ctx.fail("empty String pattern");
  } else if (j.contains("Regex")) {
    const std::string src = onig_to_icu(j["Regex"].get<std::string>());
    UErrorCode status = U_ZERO_ERROR;
    UParseError perr;
    regex_ = std::make_unique<Regex>();
    regex_->pattern.reset(icu::RegexPattern::compile(icu::UnicodeString::fromUTF8(src), 0, perr, status));
    if (U_FAILURE(status)) ctx.fail("cannot compile regex '" + j["Regex"].get<std::string>() + "': " + u_errorName(status));
  } else {
    ctx.fail("pattern must be {\"String\": ...} or {\"Regex\": ...}, got " + j.dump());
  }
}
Pattern::~Pattern() = default;
Pattern::Pattern(Pattern&&) noexcept = default;

std::vector<Piece> Pattern::find(const std::string& text) const {
  std::vector<Piece> pieces;
  size_t last = 0;
  auto add_match = [&](size_t b, size_t e) {
    if (last < b) pieces.push_back({last, b, false});
    pieces.push_back({b, e, true});
    last = e;
  };
  if (!regex_) {
    size_t pos = 0;
    while ((pos = text.find(literal_, pos)) != std::string::npos) {
      add_match(pos, pos + literal_.size());
      pos += literal_.size();
    }
  } else {
    icu::UnicodeString u = icu::UnicodeString::fromUTF8(text);
    // UTF-16 index -> UTF-8 byte index.
    std::vector<size_t> byte_at(static_cast<size_t>(u.length()) + 1);
    size_t b = 0;
    for (int32_t i = 0; i < u.length();) {
      UChar32 c = u.char32At(i);
      const int32_t n = U16_LENGTH(c);
      for (int32_t k = 0; k < n; ++k) byte_at[static_cast<size_t>(i + k)] = b;
      b += utf8_len(static_cast<char32_t>(c));
      i += n;
    }
    byte_at[static_cast<size_t>(u.length())] = b;
    UErrorCode status = U_ZERO_ERROR;
    std::unique_ptr<icu::RegexMatcher> m(regex_->pattern->matcher(u, status));
    while (U_SUCCESS(status) && m->find(status)) {
      const int32_t s = m->start(status), e = m->end(status);
      if (s == e) continue;  // empty matches split nothing
      add_match(byte_at[static_cast<size_t>(s)], byte_at[static_cast<size_t>(e)]);
    }
    if (U_FAILURE(status)) throw std::runtime_error(std::string("regex matching failed: ") + u_errorName(status));
  }
  if (last < text.size()) pieces.push_back({last, text.size(), false});
  return pieces;
}

SplitBehavior parse_behavior(const Json& j, const LoadContext& ctx) {
  const std::string b = j.get<std::string>();
  if (b == "Removed") return SplitBehavior::kRemoved;
  if (b == "Isolated") return SplitBehavior::kIsolated;
  if (b == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (b == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (b == "Contiguous") return SplitBehavior::kContiguous;
  ctx.fail("unknown split behavior '" + b + "'");
}

// ---- GPT-2 bytes <-> chars ----
namespace {
struct ByteTable {
  std::array<char32_t, 256> to_char{};
  ByteTable() {
    char32_t next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      to_char[static_cast<size_t>(b)] = printable ? static_cast<char32_t>(b) : next++;
    }
  }
};
const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}
}  // namespace

char32_t byte_to_char(uint8_t b) { return byte_table().to_char[b]; }
int char_to_byte(char32_t c) {
  if (c < 256) {
    const bool printable = (c >= '!' && c <= '~') || (c >= 0xA1 && c <= 0xAC) || (c >= 0xAE && c <= 0xFF);
    return printable ? static_cast<int>(c) : -1;
  }
  if (c < 256 + 68) {
    for (int b = 0; b < 256; ++b)
      if (byte_table().to_char[static_cast<size_t>(b)] == c) return b;
  }
  return -1;
}

std::vector<Piece> gpt2_pieces(const std::string& text) {
  // Decode once; classify: 0 letter, 1 number, 2 whitespace, 3 other.
  struct C {
    char32_t c;
    uint8_t kind;
    size_t b;
  };
  std::vector<C> cs;
  cs.reserve(text.size() + 1);
  for (size_t i = 0; i < text.size();) {
    const size_t b = i;
    const char32_t c = next_char(text, i);
    const uint8_t kind = is_letter(c) ? 0 : is_numeric(c) ? 1 : is_whitespace(c) ? 2 : 3;
    cs.push_back({c, kind, b});
  }
  const size_t n = cs.size();
  cs.push_back({0, 255, text.size()});
  std::vector<Piece> pieces;
  size_t i = 0;
  auto run = [&](size_t from, uint8_t kind) {
    while (from < n && cs[from].kind == kind) ++from;
    return from;
  };
  while (i < n) {
    size_t j = i;
    const char32_t c = cs[i].c;
    if (c == '\'' && i + 1 < n) {
      const char32_t a = cs[i + 1].c, b2 = i + 2 < n ? cs[i + 2].c : 0;
      if (a == 's' || a == 't' || a == 'm' || a == 'd') j = i + 2;
      else if ((a == 'r' && b2 == 'e') || (a == 'v' && b2 == 'e') || (a == 'l' && b2 == 'l')) j = i + 3;
    }
    if (j == i) {
      const uint8_t k = cs[i].kind;
      if (k != 2) {
        j = run(i, k);
      } else if (c == ' ' && i + 1 < n && cs[i + 1].kind != 2) {
        j = run(i + 1, cs[i + 1].kind);
      } else {
        const size_t end = run(i, 2);
        // \s+(?!\S): all the run when it ends the text, else all but its last char; a single char is \s+.
        j = end == n ? end : (end - i >= 2 ? end - 1 : end);
      }
    }
    pieces.push_back({cs[i].b, cs[j].b, true});
    i = j;
  }
  return pieces;
}

namespace {

template <typename F>
void split_each(std::vector<NormalizedString>& splits, F&& f) {
  std::vector<NormalizedString> out;
  out.reserve(splits.size() * 2);
  for (auto& s : splits) f(s, out);
  splits = std::move(out);
}

class ByteLevel : public PreTokenizer {
 public:
  explicit ByteLevel(const Json& j) : prefix_space_(j.value("add_prefix_space", true)), use_regex_(j.value("use_regex", true)) {}
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      if (prefix_space_ && s.text()[0] != ' ') s.prepend(" ");
      if (use_regex_) split_pieces(s, gpt2_pieces(s.text()), SplitBehavior::kIsolated, out);
      else out.push_back(std::move(s));
    });
    for (auto& s : splits) to_byte_chars(s);
  }
  static void to_byte_chars(NormalizedString& s) {
    std::string out;
    std::vector<Span> align;
    const std::string& t = s.text();
    out.reserve(t.size() * 2);
    align.reserve(t.size() * 2);
    size_t i = 0;
    while (i < t.size()) {
      const size_t start = i;
      next_char(t, i);
      const Span a = s.alignments()[start];
      for (size_t k = start; k < i; ++k) {
        const size_t before = out.size();
        append_utf8(out, byte_to_char(static_cast<uint8_t>(t[k])));
        align.insert(align.end(), out.size() - before, a);
      }
    }
    s.assign(std::move(out), std::move(align));
  }

 private:
  bool prefix_space_, use_regex_;
};

class Metaspace : public PreTokenizer {
 public:
  Metaspace(const Json& j, const LoadContext& ctx) {
    const std::string r = j.value("replacement", "\u2581");
    size_t i = 0;
    replacement_ = next_char(r, i);
    replacement_str_ = r;
    split_ = j.value("split", true);
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    if (scheme == "always") prepend_ = 2;
    else if (scheme == "first") prepend_ = 1;
    else if (scheme == "never") prepend_ = 0;
    else ctx.fail("unknown Metaspace prepend_scheme '" + scheme + "'");
  }
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      s.replace_char(' ', replacement_str_);
      const bool starts = s.text().compare(0, replacement_str_.size(), replacement_str_) == 0;
      if (!starts && (prepend_ == 2 || (prepend_ == 1 && s.original_span().begin == 0))) s.prepend(replacement_str_);
      if (split_) {
        const char32_t r = replacement_;
        split_pieces(s, char_pieces(s.text(), [r](char32_t c) { return c == r; }), SplitBehavior::kMergedWithNext, out);
      } else {
        out.push_back(std::move(s));
      }
    });
  }

 private:
  char32_t replacement_;
  std::string replacement_str_;
  int prepend_ = 2;
  bool split_ = true;
};

// Pieces for runs: consecutive chars of the same class form one piece; `keep(cls)` says which classes are kept.
template <typename Classify>
std::vector<Piece> class_runs(const std::string& text, Classify&& classify, int removed_class) {
  std::vector<Piece> pieces;
  size_t i = 0;
  int cur = -2;
  while (i < text.size()) {
    const size_t start = i;
    const int k = classify(next_char(text, i));
    if (k == cur && !pieces.empty()) pieces.back().end = i;
    else pieces.push_back({start, i, k == removed_class});
    cur = k;
  }
  return pieces;
}

// \w+|[^\w\s]+ kept, the rest removed. Oniguruma's Unicode \w (as UTS #18 defines it): Alphabetic, marks,
// decimal digits, connector punctuation, and the joiners U+200C/U+200D.
bool is_regex_word(char32_t c) {
  if (c < 0x80) return ((c | 0x20) >= 'a' && (c | 0x20) <= 'z') || (c >= '0' && c <= '9') || c == '_';
  if (c == 0x200C || c == 0x200D) return true;
  const int8_t t = static_cast<int8_t>(u_charType(static_cast<UChar32>(c)));
  return t == U_NON_SPACING_MARK || t == U_ENCLOSING_MARK || t == U_COMBINING_SPACING_MARK ||
         t == U_DECIMAL_DIGIT_NUMBER || t == U_CONNECTOR_PUNCTUATION ||
         u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC);
}

class Whitespace : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      auto cls = [](char32_t c) { return is_regex_word(c) ? 0 : is_whitespace(c) ? 2 : 1; };
      split_pieces(s, class_runs(s.text(), cls, 2), SplitBehavior::kRemoved, out);
    });
  }
};

class WhitespaceSplit : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      split_pieces(s, class_runs(s.text(), [](char32_t c) { return is_whitespace(c) ? 1 : 0; }, 1),
                   SplitBehavior::kRemoved, out);
    });
  }
};

class BertPreTokenizer : public PreTokenizer {
 public:
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      std::vector<NormalizedString> words;
      split_pieces(s, char_pieces(s.text(), [](char32_t c) { return is_whitespace(c); }), SplitBehavior::kRemoved,
                   words);
      for (auto& w : words)
        split_pieces(w, char_pieces(w.text(), [](char32_t c) { return is_bert_punctuation(c); }),
                     SplitBehavior::kIsolated, out);
    });
  }
};

class Punctuation : public PreTokenizer {
 public:
  Punctuation(const Json& j, const LoadContext& ctx)
      : behavior_(j.contains("behavior") ? parse_behavior(j["behavior"], ctx) : SplitBehavior::kIsolated) {}
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      split_pieces(s, char_pieces(s.text(), [](char32_t c) { return is_bert_punctuation(c); }), behavior_, out);
    });
  }

 private:
  SplitBehavior behavior_;
};

class Digits : public PreTokenizer {
 public:
  explicit Digits(const Json& j) : individual_(j.value("individual_digits", false)) {}
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      split_pieces(s, char_pieces(s.text(), [](char32_t c) { return is_numeric(c); }),
                   individual_ ? SplitBehavior::kIsolated : SplitBehavior::kContiguous, out);
    });
  }

 private:
  bool individual_;
};

class Split : public PreTokenizer {
 public:
  Split(const Json& j, const LoadContext& ctx)
      : pattern_(j.at("pattern"), ctx), behavior_(parse_behavior(j.at("behavior"), ctx)), invert_(j.value("invert", false)) {}
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    split_each(splits, [&](NormalizedString& s, std::vector<NormalizedString>& out) {
      std::vector<Piece> pieces = pattern_.find(s.text());
      if (invert_)
        for (auto& p : pieces) p.is_match = !p.is_match;
      split_pieces(s, std::move(pieces), behavior_, out);
    });
  }

 private:
  Pattern pattern_;
  SplitBehavior behavior_;
  bool invert_;
};

class Sequence : public PreTokenizer {
 public:
  Sequence(const Json& j, const LoadContext& ctx) {
    for (const auto& p : j.at("pretokenizers")) parts_.push_back(make_pre_tokenizer(p, ctx));
  }
  void pre_tokenize(std::vector<NormalizedString>& splits) const override {
    for (const auto& p : parts_) p->pre_tokenize(splits);
  }

 private:
  std::vector<std::unique_ptr<PreTokenizer>> parts_;
};

}  // namespace

std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const LoadContext& ctx) {
  if (j.is_null()) return nullptr;
  const std::string type = json_type(j);
  if (type == "BertPreTokenizer") return std::make_unique<BertPreTokenizer>();
  if (type == "ByteLevel") return std::make_unique<ByteLevel>(j);
  if (type == "Metaspace") return std::make_unique<Metaspace>(j, ctx);
  if (type == "Whitespace") return std::make_unique<Whitespace>();
  if (type == "WhitespaceSplit") return std::make_unique<WhitespaceSplit>();
  if (type == "Split") return std::make_unique<Split>(j, ctx);
  if (type == "Punctuation") return std::make_unique<Punctuation>(j, ctx);
  if (type == "Digits") return std::make_unique<Digits>(j);
  if (type == "Sequence") return std::make_unique<Sequence>(j, ctx);
  ctx.fail("unknown pre_tokenizer type '" + type + "'");
}

}  // namespace trex::tokenizers::detail
