// Normalizers of tokenizer.json: BertNormalizer, NFC/NFD/NFKC/NFKD (ICU), Lowercase, StripAccents, Replace,
// Prepend, Strip, Sequence. Each keeps the byte alignments of NormalizedString right.
#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>

#include <algorithm>

#include "tokenizers/components.h"

namespace trex::tokenizers::detail {
namespace {

enum class Form { kNFC, kNFD, kNFKC, kNFKD };

const icu::Normalizer2* icu_normalizer(Form f) {
  UErrorCode status = U_ZERO_ERROR;
  const icu::Normalizer2* n = nullptr;
  switch (f) {
    case Form::kNFC: n = icu::Normalizer2::getNFCInstance(status); break;
    case Form::kNFD: n = icu::Normalizer2::getNFDInstance(status); break;
    case Form::kNFKC: n = icu::Normalizer2::getNFKCInstance(status); break;
    case Form::kNFKD: n = icu::Normalizer2::getNFKDInstance(status); break;
  }
  if (U_FAILURE(status) || !n) throw std::runtime_error("ICU normalizer unavailable");
  return n;
}

// Unicode normalization with alignments. Text is cut into segments at normalization boundaries (ASCII and
// inert characters are copied); within a segment, as the Rust crate the reference uses does it, each character
// is decomposed into (char, change) entries (first 0, the others +1 = inserted), runs of non-starters are put in
// canonical order carrying their changes, and for the composed forms pairs are composed (the composite absorbs
// the second entry: change += its change - 1). The entries are then applied positionally: a change <= 0 entry
// takes the alignment of the next source character (and drops -change more), a +1 entry that of the previous.
struct Entry {
  char32_t c;
  int change;
};

void normalize_segment(const icu::Normalizer2* decomp, const icu::Normalizer2* nfc, bool compose,
                       const std::u32string& src, std::vector<Entry>& e) {
  e.clear();
  icu::UnicodeString d;
  for (char32_t c : src) {
    if (decomp->getDecomposition(static_cast<UChar32>(c), d)) {
      int first = 1;
      for (int32_t i = 0; i < d.length();) {
        const UChar32 x = d.char32At(i);
        i += U16_LENGTH(x);
        e.push_back({static_cast<char32_t>(x), first ? 0 : 1});
        first = 0;
      }
    } else {
      e.push_back({c, 0});
    }
  }
  // Canonical ordering: stable sort of each run of non-starters by combining class.
  for (size_t i = 0; i < e.size();) {
    if (u_getCombiningClass(static_cast<UChar32>(e[i].c)) == 0) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < e.size() && u_getCombiningClass(static_cast<UChar32>(e[j].c)) != 0) ++j;
    std::stable_sort(e.begin() + static_cast<std::ptrdiff_t>(i), e.begin() + static_cast<std::ptrdiff_t>(j),
                     [](const Entry& a, const Entry& b) {
                       return u_getCombiningClass(static_cast<UChar32>(a.c)) < u_getCombiningClass(static_cast<UChar32>(b.c));
                     });
    i = j;
  }
  if (!compose) return;
  std::vector<Entry> out;
  out.reserve(e.size());
  int64_t starter = -1;
  uint8_t last_ccc = 0;
  for (const Entry& x : e) {
    const uint8_t ccc = u_getCombiningClass(static_cast<UChar32>(x.c));
    if (starter >= 0) {
      const bool adjacent = static_cast<size_t>(starter) + 1 == out.size();
      if (adjacent || (last_ccc != 0 && last_ccc < ccc)) {
        Entry& s = out[static_cast<size_t>(starter)];
        const UChar32 composite = nfc->composePair(static_cast<UChar32>(s.c), static_cast<UChar32>(x.c));
        if (composite >= 0) {
          s.c = static_cast<char32_t>(composite);
          s.change += x.change - 1;
          continue;
        }
      }
    }
    if (ccc == 0) starter = static_cast<int64_t>(out.size());
    last_ccc = ccc;
    out.push_back(x);
  }
  e = std::move(out);
}

void unicode_normalize(NormalizedString& s, Form form) {
  const icu::Normalizer2* norm = icu_normalizer(form);
  const icu::Normalizer2* decomp =
      icu_normalizer(form == Form::kNFC || form == Form::kNFD ? Form::kNFD : Form::kNFKD);
  const icu::Normalizer2* nfc = icu_normalizer(Form::kNFC);
  const bool compose = form == Form::kNFC || form == Form::kNFKC;
  const std::string& text = s.text();
  bool ascii = true;  // ASCII is stable under every form
  for (char ch : text) ascii &= static_cast<unsigned char>(ch) < 0x80;
  if (ascii) return;
  const std::vector<Span>& align = s.alignments();
  std::string out;
  std::vector<Span> out_align;
  out.reserve(text.size() + 8);
  out_align.reserve(text.size() + 8);
  std::u32string seg;
  std::vector<Span> seg_align;  // alignment of each source char of the segment
  std::vector<Entry> entries;
  auto flush = [&] {
    if (seg.empty()) return;
    normalize_segment(decomp, nfc, compose, seg, entries);
    size_t next = 0;  // next source char
    for (const Entry& x : entries) {
      Span a;
      if (x.change > 0) {
        a = next > 0 ? seg_align[next - 1] : seg_align[0];
      } else {
        a = seg_align[std::min(next, seg_align.size() - 1)];
        next += static_cast<size_t>(1 - x.change);
      }
      const size_t before = out.size();
      append_utf8(out, x.c);
      out_align.insert(out_align.end(), out.size() - before, a);
    }
    seg.clear();
    seg_align.clear();
  };
  size_t i = 0;
  while (i < text.size()) {
    const size_t start = i;
    const char32_t c = next_char(text, i);
    const auto uc = static_cast<UChar32>(c);
    if (c < 0x80 || norm->hasBoundaryBefore(uc)) {
      flush();
      // Unchanged in any context: copy. (ASCII is stable, but a letter may compose with a following mark.)
      const bool ascii_alone = c < 0x80 && (i == text.size() || static_cast<unsigned char>(text[i]) < 0x80);
      if (ascii_alone || (c >= 0x80 && norm->isInert(uc))) {
        out.append(text, start, i - start);
        out_align.insert(out_align.end(), i - start, align[start]);
        continue;
      }
    }
    seg.push_back(c);
    seg_align.push_back(align[start]);
  }
  flush();
  s.assign(std::move(out), std::move(out_align));
}

class UnicodeNormalizer : public Normalizer {
 public:
  explicit UnicodeNormalizer(Form f) : form_(f) {}
  void normalize(NormalizedString& s) const override { unicode_normalize(s, form_); }

 private:
  Form form_;
};

bool is_chinese_char(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) || (c >= 0x20000 && c <= 0x2A6DF) ||
         (c >= 0x2A700 && c <= 0x2B73F) || (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

void strip_nonspacing_marks(NormalizedString& s) {
  s.map_chars([](char32_t c, std::u32string& out) {
    if (!is_mark_nonspacing(c)) out.push_back(c);
  });
}

void lowercase(NormalizedString& s) {
  s.map_chars([](char32_t c, std::u32string& out) { push_lowercase(c, out); });
}

class BertNormalizer : public Normalizer {
 public:
  BertNormalizer(const Json& j) {
    clean_text_ = j.value("clean_text", true);
    chinese_ = j.value("handle_chinese_chars", true);
    lowercase_ = j.value("lowercase", true);
    const Json* sa = j.contains("strip_accents") ? &j["strip_accents"] : nullptr;
    strip_accents_ = sa && !sa->is_null() ? sa->get<bool>() : lowercase_;
  }
  void normalize(NormalizedString& s) const override {
    // The passes of the reference, fused into one walk over the characters where they commute (clean-up,
    // CJK padding, lowercase); accent stripping needs NFD first.
    if (clean_text_ || chinese_) {
      s.map_chars([&](char32_t c, std::u32string& out) {
        if (clean_text_) {
          if (c == 0 || c == 0xFFFD || (c != '\t' && c != '\n' && c != '\r' && c >= 0x20 && is_other(c)) ||
              (c < 0x20 && c != '\t' && c != '\n' && c != '\r') || c == 0x7F)
            return;
          if (is_whitespace(c)) c = ' ';
        }
        if (chinese_ && is_chinese_char(c)) {
          out.push_back(' ');
          out.push_back(c);
          out.push_back(' ');
        } else {
          out.push_back(c);
        }
      });
    }
    if (strip_accents_) {
      unicode_normalize(s, Form::kNFD);
      strip_nonspacing_marks(s);
    }
    if (lowercase_) lowercase(s);
  }

 private:
  bool clean_text_, chinese_, lowercase_, strip_accents_;
};

class Lowercase : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override { lowercase(s); }
};

// Unlike BertNormalizer's accent stripping (Mn only), the StripAccents normalizer drops every mark (M*).
class StripAccents : public Normalizer {
 public:
  void normalize(NormalizedString& s) const override {
    s.map_chars([](char32_t c, std::u32string& out) {
      if (c < 0x300 || !(U_GET_GC_MASK(static_cast<UChar32>(c)) & U_GC_M_MASK)) out.push_back(c);
    });
  }
};

class Strip : public Normalizer {
 public:
  Strip(bool left, bool right) : left_(left), right_(right) {}
  void normalize(NormalizedString& s) const override {
    const std::string& t = s.text();
    size_t b = 0, e = t.size();
    if (left_) {
      while (b < e) {
        size_t i = b;
        if (!is_whitespace(next_char(t, i))) break;
        b = i;
      }
    }
    if (right_) {
      while (e > b) {
        size_t start = e - 1;
        while (start > b && (static_cast<unsigned char>(t[start]) & 0xC0) == 0x80) --start;
        size_t i = start;
        if (!is_whitespace(next_char(t, i))) break;
        e = start;
      }
    }
    if (b == 0 && e == t.size()) return;
    std::string text = t.substr(b, e - b);
    std::vector<Span> align(s.alignments().begin() + static_cast<std::ptrdiff_t>(b),
                            s.alignments().begin() + static_cast<std::ptrdiff_t>(e));
    s.assign(std::move(text), std::move(align));
  }

 private:
  bool left_, right_;
};

class Prepend : public Normalizer {
 public:
  explicit Prepend(std::string p) : prepend_(std::move(p)) {}
  void normalize(NormalizedString& s) const override { s.prepend(prepend_); }

 private:
  std::string prepend_;
};

// Each match is replaced by `content`, whose characters take the alignment of the match's last character.
class Replace : public Normalizer {
 public:
  Replace(const Json& j, const LoadContext& ctx) : pattern_(j.at("pattern"), ctx), content_(j.value("content", "")) {}
  void normalize(NormalizedString& s) const override {
    const std::string& t = s.text();
    std::vector<Piece> pieces = pattern_.find(t);
    std::string out;
    std::vector<Span> align;
    out.reserve(t.size());
    align.reserve(t.size());
    for (const Piece& p : pieces) {
      if (!p.is_match) {
        out.append(t, p.begin, p.end - p.begin);
        align.insert(align.end(), s.alignments().begin() + static_cast<std::ptrdiff_t>(p.begin),
                     s.alignments().begin() + static_cast<std::ptrdiff_t>(p.end));
      } else if (!content_.empty()) {
        out += content_;
        align.insert(align.end(), content_.size(), s.alignments()[p.end - 1]);
      }
    }
    s.assign(std::move(out), std::move(align));
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class Sequence : public Normalizer {
 public:
  Sequence(const Json& j, const LoadContext& ctx) {
    for (const auto& n : j.at("normalizers")) parts_.push_back(make_normalizer(n, ctx));
  }
  void normalize(NormalizedString& s) const override {
    for (const auto& p : parts_) p->normalize(s);
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> parts_;
};

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& j, const LoadContext& ctx) {
  if (j.is_null()) return nullptr;
  const std::string type = json_type(j);
  if (type == "BertNormalizer") return std::make_unique<BertNormalizer>(j);
  if (type == "NFC") return std::make_unique<UnicodeNormalizer>(Form::kNFC);
  if (type == "NFD") return std::make_unique<UnicodeNormalizer>(Form::kNFD);
  if (type == "NFKC") return std::make_unique<UnicodeNormalizer>(Form::kNFKC);
  if (type == "NFKD") return std::make_unique<UnicodeNormalizer>(Form::kNFKD);
  if (type == "Lowercase") return std::make_unique<Lowercase>();
  if (type == "StripAccents") return std::make_unique<StripAccents>();
  if (type == "Strip") return std::make_unique<Strip>(j.value("strip_left", true), j.value("strip_right", true));
  if (type == "Prepend") return std::make_unique<Prepend>(j.at("prepend").get<std::string>());
  if (type == "Replace") return std::make_unique<Replace>(j, ctx);
  if (type == "Sequence") return std::make_unique<Sequence>(j, ctx);
  if (type == "Precompiled") return make_precompiled(j, ctx);
  ctx.fail("unknown normalizer type '" + type + "'");
}

}  // namespace trex::tokenizers::detail
