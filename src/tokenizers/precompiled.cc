// The Precompiled normalizer: a SentencePiece normalization rule (`precompiled_charsmap`, base64 in
// tokenizer.json) run as Hugging Face tokenizers runs it. The blob is [u32 LE trie size in bytes][darts-clone
// double-array trie, u32 units][pool of NUL-terminated replacement strings]; a trie key is a UTF-8 string, its
// value the pool offset of the replacement. The reference walks extended grapheme clusters: a cluster shorter
// than 6 bytes whose bytes start with a key is replaced whole by the replacement of the shortest such key;
// otherwise each character that is a key is replaced. Alignments follow the reference's (char, change) rules.
// Every trie index and pool offset is bounds-checked: the blob is untrusted input.
#include <unicode/brkiter.h>
#include <unicode/utext.h>

#include <memory>

#include "tokenizers/components.h"

namespace trex::tokenizers::detail {
namespace {

std::string base64_decode(const std::string& in, const LoadContext& ctx) {
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  out.reserve(in.size() / 4 * 3);
  uint32_t acc = 0;
  int bits = 0;
  size_t pad = 0;
  for (char c : in) {
    if (c == '=') {
      ++pad;
      continue;
    }
    if (c == '\n' || c == '\r') continue;
    const int v = value(c);
    if (v < 0 || pad > 0) ctx.fail("Precompiled normalizer: precompiled_charsmap is not valid base64");
    acc = (acc << 6) | static_cast<uint32_t>(v);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push_back(static_cast<char>((acc >> bits) & 0xFF));
    }
  }
  if (pad > 2) ctx.fail("Precompiled normalizer: precompiled_charsmap is not valid base64");
  return out;
}

class Precompiled : public Normalizer {
 public:
  Precompiled(const Json& j, const LoadContext& ctx) {
    const Json& m = j.at("precompiled_charsmap");
    if (!m.is_string()) ctx.fail("Precompiled normalizer: precompiled_charsmap is not a string");
    const std::string blob = base64_decode(m.get<std::string>(), ctx);
    if (blob.size() < 4)  // the reference refuses an empty charsmap too
      ctx.fail("Precompiled normalizer: charsmap shorter than its 4-byte header");
    const uint32_t trie_bytes = le32(blob.data());
    if (trie_bytes % 4 != 0 || trie_bytes > blob.size() - 4)
      ctx.fail("Precompiled normalizer: charsmap trie size " + std::to_string(trie_bytes) +
               " does not fit the " + std::to_string(blob.size()) + "-byte blob");
    units_.resize(trie_bytes / 4);
    for (size_t i = 0; i < units_.size(); ++i) units_[i] = le32(blob.data() + 4 + 4 * i);
    pool_ = blob.substr(4 + trie_bytes);
    if (find_invalid_utf8(pool_) != std::string::npos)
      ctx.fail("Precompiled normalizer: charsmap replacement pool is not valid UTF-8");
  }

  void normalize(NormalizedString& s) const override {
    if (units_.empty() || s.empty()) return;
    const std::string& text = s.text();
    // Fast path: no byte of the text starts a key (the common case for plain ASCII text).
    bool any = false;
    for (size_t i = 0; i < text.size() && !any; ++i) any = first_byte_is_key_start(static_cast<uint8_t>(text[i]));
    if (!any) return;

    std::vector<std::pair<char32_t, int64_t>> tr;  // (char, change)
    tr.reserve(text.size());
    bool modified = false;
    auto replace = [&](std::string_view old_part, std::string_view new_part) {
      const auto old_count = static_cast<int64_t>(count_chars(old_part));
      const auto new_count = static_cast<int64_t>(count_chars(new_part));
      for (size_t i = 0; i < new_part.size();) tr.push_back({next_char(new_part, i), 0});
      const int64_t diff = new_count - old_count;
      if (diff > 0) {
        for (int64_t k = 0; k < diff; ++k) tr[tr.size() - 1 - static_cast<size_t>(k)].second = 1;
      } else if (diff < 0 && !tr.empty()) {
        tr.back().second += diff;
      }
    };
    for_each_grapheme(text, [&](size_t gb, size_t ge) {
      const std::string_view g(text.data() + gb, ge - gb);
      std::string_view norm;
      if (g.size() < 6 && transform(g, norm)) {
        modified = true;
        replace(g, norm);
        return;
      }
      for (size_t i = 0; i < g.size();) {
        const size_t start = i;
        const char32_t c = next_char(g, i);
        const std::string_view part = g.substr(start, i - start);
        if (transform(part, norm)) {
          modified = true;
          replace(part, norm);
        } else {
          tr.push_back({c, 0});
        }
      }
    });
    if (modified) apply(s, tr);
  }

 private:
  static uint32_t le32(const char* p) {
    const auto* u = reinterpret_cast<const unsigned char*>(p);
    return static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 | static_cast<uint32_t>(u[2]) << 16 |
           static_cast<uint32_t>(u[3]) << 24;
  }
  // darts-clone unit fields.
  static bool has_leaf(uint32_t u) { return (u >> 8) & 1; }
  static uint32_t value(uint32_t u) { return u & 0x7FFFFFFFu; }
  static uint32_t label(uint32_t u) { return u & (0x80000000u | 0xFFu); }
  static size_t offset(uint32_t u) { return static_cast<size_t>(u >> 10) << ((u & (1u << 9)) >> 6); }

  bool first_byte_is_key_start(uint8_t c) const {
    if (c == 0) return false;
    size_t node = offset(units_[0]) ^ c;
    return node < units_.size() && label(units_[node]) == c;
  }

  // Replacement of the shortest key that is a prefix of `key` (the reference's first common-prefix result).
  bool transform(std::string_view key, std::string_view& out) const {
    size_t node = offset(units_[0]);
    for (char ch : key) {
      const auto c = static_cast<uint8_t>(ch);
      if (c == 0) return false;
      node ^= c;
      if (node >= units_.size()) return false;
      const uint32_t u = units_[node];
      if (label(u) != c) return false;
      node ^= offset(u);
      if (has_leaf(u)) {
        if (node >= units_.size()) return false;
        const size_t at = value(units_[node]);
        if (at >= pool_.size()) return false;
        const size_t end = pool_.find('\0', at);
        out = std::string_view(pool_).substr(at, (end == std::string::npos ? pool_.size() : end) - at);
        return true;
      }
    }
    return false;
  }

  template <typename F>
  static void for_each_grapheme(const std::string& text, F&& f) {
    thread_local std::unique_ptr<icu::BreakIterator> proto;
    UErrorCode status = U_ZERO_ERROR;
    if (!proto) {
      proto.reset(icu::BreakIterator::createCharacterInstance(icu::Locale::getRoot(), status));
      if (U_FAILURE(status) || !proto) throw std::runtime_error("ICU grapheme break iterator unavailable");
    }
    UText* ut = utext_openUTF8(nullptr, text.data(), static_cast<int64_t>(text.size()), &status);
    if (U_FAILURE(status)) throw std::runtime_error("ICU utext_openUTF8 failed");
    proto->setText(ut, status);
    int32_t b = proto->first();
    for (int32_t e = proto->next(); e != icu::BreakIterator::DONE; b = e, e = proto->next())
      f(static_cast<size_t>(b), static_cast<size_t>(e));
    utext_close(ut);
  }

  // The reference's NormalizedString::transform over the whole string, byte alignments included.
  static void apply(NormalizedString& s, const std::vector<std::pair<char32_t, int64_t>>& tr) {
    const std::string& text = s.text();
    const std::vector<Span>& align = s.alignments();
    std::string out;
    std::vector<Span> out_align;
    out.reserve(text.size() + 8);
    out_align.reserve(text.size() + 8);
    size_t offset = 0;  // byte offset of the next source char
    auto skip_char = [&]() -> size_t {
      if (offset >= text.size()) return 0;
      size_t i = offset;
      next_char(text, i);
      return i - offset;
    };
    for (const auto& [c, change] : tr) {
      Span a{};
      if (change > 0) {
        if (offset >= 1 && offset - 1 < align.size()) a = align[offset - 1];
      } else if (offset < align.size()) {
        a = align[offset];
      } else if (!align.empty()) {
        a = align.back();
      }
      if (change <= 0) offset += skip_char();
      for (int64_t k = 0; k < -change; ++k) offset += skip_char();
      const size_t before = out.size();
      append_utf8(out, c);
      out_align.insert(out_align.end(), out.size() - before, a);
    }
    s.assign(std::move(out), std::move(out_align));
  }

  std::vector<uint32_t> units_;
  std::string pool_;
};

}  // namespace

std::unique_ptr<Normalizer> make_precompiled(const Json& j, const LoadContext& ctx) {
  return std::make_unique<Precompiled>(j, ctx);
}

}  // namespace trex::tokenizers::detail
