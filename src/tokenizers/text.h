// Text primitives of the tokenizers: UTF-8 decoding, the Unicode predicates the components need (ICU), and
// NormalizedString, a UTF-8 string that remembers, for each of its bytes, which bytes of the original input it
// came from, so that token offsets point into the user's text after any normalization.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace trex::tokenizers::detail {

// ---- UTF-8 ----
// Byte index of the first invalid sequence, or npos when `s` is valid UTF-8.
size_t find_invalid_utf8(std::string_view s);
// Decodes the code point at s[i] (s valid UTF-8) and advances i.
char32_t next_char(std::string_view s, size_t& i);
void append_utf8(std::string& out, char32_t c);
inline size_t utf8_len(char32_t c) { return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4; }
size_t count_chars(std::string_view s);

// ---- Unicode predicates (as the Rust crate's `char` methods define them) ----
bool is_whitespace(char32_t c);        // White_Space property (Rust char::is_whitespace)
bool is_alphanumeric(char32_t c);      // Alphabetic or Numeric (Rust char::is_alphanumeric)
bool is_numeric(char32_t c);           // general category N* (Rust char::is_numeric)
bool is_letter(char32_t c);            // L*
bool is_mark_nonspacing(char32_t c);   // Mn
bool is_other(char32_t c);             // Cc, Cf, Co, Cs (not Cn: the reference keeps unassigned chars)
bool is_punctuation(char32_t c);       // P*
bool is_bert_punctuation(char32_t c);  // ASCII punctuation or P*
void push_lowercase(char32_t c, std::u32string& out);  // full lowercase mapping, context-free

// ---- NormalizedString ----
struct Span {
  uint32_t begin = 0, end = 0;
};

class NormalizedString {
 public:
  NormalizedString() = default;
  // The whole input: each byte aligned to the bytes of its own character.
  explicit NormalizedString(std::string_view original);

  const std::string& text() const { return text_; }
  const std::vector<Span>& alignments() const { return align_; }
  bool empty() const { return text_.empty(); }
  // Range of the original input this piece covers.
  Span original_span() const { return span_; }

  // Original range of normalized bytes [b, e); `fallback` for an empty range.
  Span original_of(size_t b, size_t e, Span fallback) const;
  // A piece of this string: normalized bytes [b, e), b < e.
  NormalizedString slice(size_t b, size_t e) const;

  // Rewrites each character through `f(c, out)` (out empty on entry): out[0] replaces c and keeps its
  // alignment, further characters are inserted with the same alignment; an empty `out` removes c.
  template <typename F>
  void map_chars(F&& f);
  // Replaces the whole content (Unicode normalization builds it segment by segment).
  void assign(std::string text, std::vector<Span> align) {
    text_ = std::move(text);
    align_ = std::move(align);
  }

  void prepend(std::string_view s);  // prepended chars aligned like the first char (no-op when empty)
  void replace_char(char32_t from, std::string_view to);

 private:
  std::string text_;
  std::vector<Span> align_;  // one per byte of text_
  Span span_{};
};

template <typename F>
void NormalizedString::map_chars(F&& f) {
  std::string out;
  std::vector<Span> align;
  out.reserve(text_.size());
  align.reserve(text_.size());
  std::u32string buf;
  size_t i = 0;
  while (i < text_.size()) {
    const size_t start = i;
    char32_t c = next_char(text_, i);
    buf.clear();
    f(c, buf);
    const Span a = align_[start];
    for (char32_t o : buf) {
      const size_t before = out.size();
      append_utf8(out, o);
      align.insert(align.end(), out.size() - before, a);
    }
  }
  text_ = std::move(out);
  align_ = std::move(align);
}

// Splitting: a list of [begin, end) normalized byte ranges flagged as pattern matches, covering the string.
struct Piece {
  size_t begin, end;
  bool is_match;
};
enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };
// Applies the behavior to the pieces and returns the non-empty slices.
void split_pieces(const NormalizedString& s, std::vector<Piece> pieces, SplitBehavior behavior,
                  std::vector<NormalizedString>& out);
// Pieces for a predicate on characters: each matching char is its own match.
template <typename Pred>
std::vector<Piece> char_pieces(const std::string& text, Pred&& pred) {
  std::vector<Piece> pieces;
  size_t i = 0, last = 0;
  while (i < text.size()) {
    const size_t start = i;
    char32_t c = next_char(text, i);
    if (pred(c)) {
      if (last < start) pieces.push_back({last, start, false});
      pieces.push_back({start, i, true});
      last = i;
    }
  }
  if (last < text.size()) pieces.push_back({last, text.size(), false});
  return pieces;
}

}  // namespace trex::tokenizers::detail
