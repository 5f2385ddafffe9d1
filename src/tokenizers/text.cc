// UTF-8, Unicode predicates (ICU) and NormalizedString.
#include "tokenizers/text.h"

#include <unicode/uchar.h>

#include <algorithm>

namespace trex::tokenizers::detail {

size_t find_invalid_utf8(std::string_view s) {
  size_t i = 0;
  const size_t n = s.size();
  while (i < n) {
    const auto b = static_cast<unsigned char>(s[i]);
    if (b < 0x80) {
      ++i;
      continue;
    }
    size_t len;
    char32_t min;
    if (b >= 0xC2 && b <= 0xDF) len = 2, min = 0x80;
    else if (b >= 0xE0 && b <= 0xEF) len = 3, min = 0x800;
    else if (b >= 0xF0 && b <= 0xF4) len = 4, min = 0x10000;
    else return i;
    if (i + len > n) return i;
    char32_t c = b & (0x7F >> len);
    for (size_t k = 1; k < len; ++k) {
      const auto t = static_cast<unsigned char>(s[i + k]);
      if ((t & 0xC0) != 0x80) return i;
      c = (c << 6) | (t & 0x3F);
    }
    if (c < min || c > 0x10FFFF || (c >= 0xD800 && c <= 0xDFFF)) return i;
    i += len;
  }
  return std::string_view::npos;
}

char32_t next_char(std::string_view s, size_t& i) {
  const auto b = static_cast<unsigned char>(s[i]);
  if (b < 0x80) {
    ++i;
    return b;
  }
  size_t len = b >= 0xF0 ? 4 : b >= 0xE0 ? 3 : 2;
  char32_t c = b & (0x7F >> len);
  for (size_t k = 1; k < len; ++k) c = (c << 6) | (static_cast<unsigned char>(s[i + k]) & 0x3F);
  i += len;
  return c;
}

void append_utf8(std::string& out, char32_t c) {
  if (c < 0x80) {
    out.push_back(static_cast<char>(c));
  } else if (c < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (c >> 6)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else if (c < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (c >> 12)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (c >> 18)));
    out.push_back(static_cast<char>(0x80 | ((c >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((c >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (c & 0x3F)));
  }
}

size_t count_chars(std::string_view s) {
  size_t n = 0;
  for (char ch : s) n += (static_cast<unsigned char>(ch) & 0xC0) != 0x80;
  return n;
}

static int8_t category(char32_t c) { return static_cast<int8_t>(u_charType(static_cast<UChar32>(c))); }

bool is_whitespace(char32_t c) {
  if (c < 0x80) return c == ' ' || (c >= 0x09 && c <= 0x0D);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_WHITE_SPACE);
}

bool is_numeric(char32_t c) {
  if (c < 0x80) return c >= '0' && c <= '9';
  const int8_t t = category(c);
  return t == U_DECIMAL_DIGIT_NUMBER || t == U_LETTER_NUMBER || t == U_OTHER_NUMBER;
}

bool is_letter(char32_t c) {
  if (c < 0x80) return (c | 0x20) >= 'a' && (c | 0x20) <= 'z';
  const int8_t t = category(c);
  return t == U_UPPERCASE_LETTER || t == U_LOWERCASE_LETTER || t == U_TITLECASE_LETTER || t == U_MODIFIER_LETTER ||
         t == U_OTHER_LETTER;
}

bool is_alphanumeric(char32_t c) {
  if (c < 0x80) return is_letter(c) || is_numeric(c);
  return u_hasBinaryProperty(static_cast<UChar32>(c), UCHAR_ALPHABETIC) || is_numeric(c);
}

bool is_mark_nonspacing(char32_t c) { return c >= 0x300 && category(c) == U_NON_SPACING_MARK; }

bool is_other(char32_t c) {
  const int8_t t = category(c);
  return t == U_CONTROL_CHAR || t == U_FORMAT_CHAR || t == U_PRIVATE_USE_CHAR ||
         t == U_SURROGATE;
}

bool is_punctuation(char32_t c) {
  const int8_t t = category(c);
  return t == U_CONNECTOR_PUNCTUATION || t == U_DASH_PUNCTUATION || t == U_START_PUNCTUATION ||
         t == U_END_PUNCTUATION || t == U_INITIAL_PUNCTUATION || t == U_FINAL_PUNCTUATION ||
         t == U_OTHER_PUNCTUATION;
}

bool is_bert_punctuation(char32_t c) {
  if ((c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126)) return true;
  return c >= 0x80 && is_punctuation(c);
}

void push_lowercase(char32_t c, std::u32string& out) {
  if (c < 0x80) {
    out.push_back(c >= 'A' && c <= 'Z' ? c + 32 : c);
  } else if (c == 0x130) {  // the one unconditional multi-character lowercase mapping (SpecialCasing.txt)
    out.push_back(U'i');
    out.push_back(0x307);
  } else {
    out.push_back(static_cast<char32_t>(u_tolower(static_cast<UChar32>(c))));
  }
}

NormalizedString::NormalizedString(std::string_view original) : text_(original) {
  align_.resize(text_.size());
  size_t i = 0;
  while (i < text_.size()) {
    const size_t start = i;
    next_char(text_, i);
    for (size_t k = start; k < i; ++k) align_[k] = {static_cast<uint32_t>(start), static_cast<uint32_t>(i)};
  }
  span_ = {0, static_cast<uint32_t>(text_.size())};
}

Span NormalizedString::original_of(size_t b, size_t e, Span fallback) const {
  if (b >= e || e > align_.size()) return fallback;
  return {align_[b].begin, align_[e - 1].end};
}

NormalizedString NormalizedString::slice(size_t b, size_t e) const {
  NormalizedString r;
  r.text_ = text_.substr(b, e - b);
  r.align_.assign(align_.begin() + static_cast<std::ptrdiff_t>(b), align_.begin() + static_cast<std::ptrdiff_t>(e));
  r.span_ = original_of(b, e, {span_.begin, span_.begin});
  return r;
}

void NormalizedString::prepend(std::string_view s) {
  if (text_.empty() || s.empty()) return;
  const Span a = align_[0];
  text_.insert(0, s);
  align_.insert(align_.begin(), s.size(), a);
}

void NormalizedString::replace_char(char32_t from, std::string_view to) {
  if (text_.find(static_cast<char>(from)) == std::string::npos && from < 0x80) return;
  std::u32string repl;
  for (size_t i = 0; i < to.size();) repl.push_back(next_char(to, i));
  map_chars([&](char32_t c, std::u32string& out) {
    if (c == from) out = repl;
    else out.push_back(c);
  });
}

void split_pieces(const NormalizedString& s, std::vector<Piece> pieces, SplitBehavior behavior,
                  std::vector<NormalizedString>& out) {
  std::vector<Piece> kept;  // is_match here means "remove"
  switch (behavior) {
    case SplitBehavior::kRemoved:
      kept = std::move(pieces);
      break;
    case SplitBehavior::kIsolated:
      kept = std::move(pieces);
      for (auto& p : kept) p.is_match = false;
      break;
    case SplitBehavior::kContiguous: {
      bool prev = false;
      for (const auto& p : pieces) {
        if (p.is_match == prev && !kept.empty()) kept.back().end = p.end;
        else kept.push_back({p.begin, p.end, false});
        prev = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithPrevious: {
      bool prev = false;
      for (const auto& p : pieces) {
        if (p.is_match && !prev && !kept.empty()) kept.back().end = p.end;
        else kept.push_back({p.begin, p.end, false});
        prev = p.is_match;
      }
      break;
    }
    case SplitBehavior::kMergedWithNext: {
      bool prev = false;
      for (auto it = pieces.rbegin(); it != pieces.rend(); ++it) {
        if (it->is_match && !prev && !kept.empty()) kept.back().begin = it->begin;
        else kept.push_back({it->begin, it->end, false});
        prev = it->is_match;
      }
      std::reverse(kept.begin(), kept.end());
      break;
    }
  }
  for (const auto& p : kept)
    if (!p.is_match && p.begin < p.end) out.push_back(s.slice(p.begin, p.end));
}

}  // namespace trex::tokenizers::detail
