// Post-processors (TemplateProcessing, BertProcessing, RobertaProcessing, ByteLevel, Sequence) and decoders
// (WordPiece, ByteLevel, Metaspace, BPEDecoder, ByteFallback, Fuse, Strip, Replace, Sequence) of tokenizer.json.
#include <map>

#include "tokenizers/components.h"

namespace trex::tokenizers::detail {
namespace {

struct SpecialPiece {
  std::vector<int64_t> ids;
  std::vector<std::string> tokens;
  int64_t type_id = 0;
};

Enc special_enc(const SpecialPiece& p) {
  Enc e;
  const size_t n = p.ids.size();
  e.ids = p.ids;
  e.tokens = p.tokens;
  e.type_ids.assign(n, p.type_id);
  e.special.assign(n, 1);
  e.word_ids.assign(n, -1);
  e.sequence_ids.assign(n, -1);
  e.offsets.assign(n, {0, 0});
  return e;
}

void set_type(Enc& e, int64_t type_id) { e.type_ids.assign(e.ids.size(), type_id); }

// Offsets of byte-level tokens trimmed of the spaces they carry (Ġ or whitespace), as the reference does.
void trim_byte_level_offsets(Enc& e, bool add_prefix_space) {
  const char32_t space = byte_to_char(' ');
  for (size_t k = 0; k < e.tokens.size(); ++k) {
    std::u32string cs;
    const std::string& t = e.tokens[k];
    for (size_t i = 0; i < t.size();) cs.push_back(next_char(t, i));
    auto is_sp = [&](char32_t c) { return c == space || is_whitespace(c); };
    size_t lead = 0, trail = 0;
    while (lead < cs.size() && is_sp(cs[lead])) ++lead;
    while (trail < cs.size() && is_sp(cs[cs.size() - 1 - trail])) ++trail;
    auto& [b, en] = e.offsets[k];
    if (lead > 0) {
      const bool is_first = k == 0 || b == 0;
      if (is_first && add_prefix_space && lead == 1) lead = 0;
      b = std::min(b + lead, en);
    }
    if (trail > 0 && en >= trail) en = std::max(en - trail, b);
  }
}

class Template : public PostProcessor {
 public:
  Template(const Json& j, const LoadContext& ctx) {
    if (j.contains("special_tokens"))
      for (auto it = j["special_tokens"].begin(); it != j["special_tokens"].end(); ++it) {
        SpecialPiece p;
        p.ids = it.value().at("ids").get<std::vector<int64_t>>();
        p.tokens = it.value().at("tokens").get<std::vector<std::string>>();
        if (p.ids.size() != p.tokens.size()) ctx.fail("TemplateProcessing special token '" + it.key() + "': ids and tokens differ in length");
        specials_[it.key()] = p;
      }
    single_ = parse(j.at("single"), ctx);
    if (j.contains("pair") && !j["pair"].is_null()) pair_ = parse(j["pair"], ctx);
  }
  size_t added_tokens(bool pair) const override {
    size_t n = 0;
    for (const Item& i : pair ? pair_ : single_)
      if (i.sequence < 0) n += specials_.at(i.special).ids.size();
    return n;
  }
  void process(std::vector<Enc>& encs, bool add) const override {
    const std::vector<Item>& tpl = encs.size() == 2 ? pair_ : single_;
    std::vector<Enc> out;
    for (const Item& i : tpl) {
      if (i.sequence >= 0) {
        if (static_cast<size_t>(i.sequence) >= encs.size()) continue;
        Enc e = encs[static_cast<size_t>(i.sequence)];
        set_type(e, i.type_id);
        out.push_back(std::move(e));
      } else if (add) {
        SpecialPiece p = specials_.at(i.special);
        p.type_id = i.type_id;
        out.push_back(special_enc(p));
      }
    }
    encs = std::move(out);
  }

 private:
  struct Item {
    int sequence = -1;  // 0 = A, 1 = B, -1 = special token
    std::string special;
    int64_t type_id = 0;
  };
  std::vector<Item> parse(const Json& list, const LoadContext& ctx) const {
    std::vector<Item> items;
    for (const auto& item : list) {
      Item it;
      if (item.contains("SpecialToken")) {
        it.special = item["SpecialToken"].at("id").get<std::string>();
        if (!specials_.count(it.special))
          ctx.fail("TemplateProcessing names special token '" + it.special + "' without defining it");
        it.type_id = item["SpecialToken"].value("type_id", 0);
      } else if (item.contains("Sequence")) {
        const std::string id = item["Sequence"].at("id").get<std::string>();
        if (id != "A" && id != "B") ctx.fail("TemplateProcessing sequence id must be A or B, got '" + id + "'");
        it.sequence = id == "A" ? 0 : 1;
        it.type_id = item["Sequence"].value("type_id", 0);
      } else {
        ctx.fail("unknown TemplateProcessing piece " + item.dump());
      }
      items.push_back(std::move(it));
    }
    return items;
  }
  std::map<std::string, SpecialPiece> specials_;
  std::vector<Item> single_, pair_;
};

// BertProcessing and RobertaProcessing: CLS A SEP (Roberta also trims byte-level offsets).
class ClsSep : public PostProcessor {
 public:
  ClsSep(const Json& j, bool roberta) : roberta_(roberta) {
    cls_.tokens = {j.at("cls").at(0).get<std::string>()};
    cls_.ids = {j.at("cls").at(1).get<int64_t>()};
    sep_.tokens = {j.at("sep").at(0).get<std::string>()};
    sep_.ids = {j.at("sep").at(1).get<int64_t>()};
    trim_ = roberta && j.value("trim_offsets", true);
    prefix_space_ = j.value("add_prefix_space", true);
  }
  size_t added_tokens(bool pair) const override { return pair ? (roberta_ ? 4 : 3) : 2; }
  void process(std::vector<Enc>& encs, bool add) const override {
    if (trim_)
      for (auto& e : encs) trim_byte_level_offsets(e, prefix_space_);
    if (roberta_)  // RoBERTa has one token type
      for (auto& e : encs) set_type(e, 0);
    if (!add) return;
    std::vector<Enc> out{special_enc(cls_), encs[0], special_enc(sep_)};
    if (encs.size() == 2) {
      if (roberta_) {
        out.push_back(special_enc(sep_));
        out.push_back(encs[1]);
        out.push_back(special_enc(sep_));
      } else {
        SpecialPiece sep1 = sep_;
        sep1.type_id = 1;
        Enc b = encs[1];
        set_type(b, 1);
        out.push_back(std::move(b));
        out.push_back(special_enc(sep1));
      }
    }
    encs = std::move(out);
  }

 private:
  SpecialPiece cls_, sep_;
  bool roberta_, trim_ = false, prefix_space_ = true;
};

class ByteLevelProcessor : public PostProcessor {
 public:
  explicit ByteLevelProcessor(const Json& j)
      : trim_(j.value("trim_offsets", true)), prefix_space_(j.value("add_prefix_space", true)) {}
  size_t added_tokens(bool) const override { return 0; }
  void process(std::vector<Enc>& encs, bool) const override {
    if (trim_)
      for (auto& e : encs) trim_byte_level_offsets(e, prefix_space_);
  }

 private:
  bool trim_, prefix_space_;
};

class ProcessorSequence : public PostProcessor {
 public:
  ProcessorSequence(const Json& j, const LoadContext& ctx) {
    for (const auto& p : j.at("processors")) parts_.push_back(make_post_processor(p, ctx));
  }
  size_t added_tokens(bool pair) const override {
    size_t n = 0;
    for (const auto& p : parts_) n += p->added_tokens(pair);
    return n;
  }
  void process(std::vector<Enc>& encs, bool add) const override {
    for (const auto& p : parts_) p->process(encs, add);
  }

 private:
  std::vector<std::unique_ptr<PostProcessor>> parts_;
};

// ---- decoders ----

std::string replace_all(const std::string& s, std::string_view from, std::string_view to) {
  if (from.empty()) return s;
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (true) {
    const size_t f = s.find(from, pos);
    if (f == std::string::npos) break;
    out.append(s, pos, f - pos);
    out.append(to);
    pos = f + from.size();
  }
  out.append(s, pos, std::string::npos);
  return out;
}

std::string cleanup(std::string s) {
  static const std::pair<const char*, const char*> kRules[] = {
      {" .", "."},       {" ?", "?"},    {" !", "!"},       {" ,", ","},      {" ' ", "'"},     {" n't", "n't"},
      {" 'm", "'m"},     {" do not", " don't"}, {" 's", "'s"}, {" 've", "'ve"}, {" 're", "'re"}};
  for (const auto& [a, b] : kRules) s = replace_all(s, a, b);
  return s;
}

// Bytes to text as Rust's String::from_utf8_lossy (which the reference uses) makes it: each maximal prefix of a
// valid sequence that is cut short, and each byte that cannot start one, becomes one U+FFFD.
std::string lossy_utf8(const std::string& bytes) {
  std::string out;
  size_t i = 0;
  while (i < bytes.size()) {
    const size_t bad = find_invalid_utf8(std::string_view(bytes).substr(i));
    if (bad == std::string_view::npos) {
      out.append(bytes, i, std::string::npos);
      break;
    }
    out.append(bytes, i, bad);
    out += "\xEF\xBF\xBD";
    i += bad;
    const auto b = static_cast<unsigned char>(bytes[i]);
    size_t len = 0;
    unsigned char lo = 0x80, hi = 0xBF;  // the second byte's range
    if (b >= 0xC2 && b <= 0xDF) len = 2;
    else if (b >= 0xE0 && b <= 0xEF) len = 3, lo = b == 0xE0 ? 0xA0 : 0x80, hi = b == 0xED ? 0x9F : 0xBF;
    else if (b >= 0xF0 && b <= 0xF4) len = 4, lo = b == 0xF0 ? 0x90 : 0x80, hi = b == 0xF4 ? 0x8F : 0xBF;
    size_t used = 1;
    while (used < len && i + used < bytes.size()) {
      const auto t = static_cast<unsigned char>(bytes[i + used]);
      if (used == 1 ? (t < lo || t > hi) : (t & 0xC0) != 0x80) break;
      ++used;
    }
    i += used;
  }
  return out;
}

class WordPieceDecoder : public Decoder {
 public:
  explicit WordPieceDecoder(const Json& j) : prefix_(j.value("prefix", "##")), cleanup_(j.value("cleanup", true)) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      if (i != 0) {
        if (t.compare(0, prefix_.size(), prefix_) == 0) t.erase(0, prefix_.size());
        else t.insert(0, " ");
      }
      if (cleanup_) t = cleanup(std::move(t));
    }
  }

 private:
  std::string prefix_;
  bool cleanup_;
};

class ByteLevelDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string bytes;
    for (const auto& t : tokens)
      for (size_t i = 0; i < t.size();) {
        const size_t start = i;
        const int b = char_to_byte(next_char(t, i));
        if (b >= 0) bytes.push_back(static_cast<char>(b));
        else bytes.append(t, start, i - start);
      }
    tokens.assign(1, lossy_utf8(bytes));
  }
};

class MetaspaceDecoder : public Decoder {
 public:
  explicit MetaspaceDecoder(const Json& j) {
    replacement_ = j.value("replacement", "\u2581");
    std::string scheme = j.value("prepend_scheme", "");
    if (scheme.empty()) scheme = j.value("add_prefix_space", true) ? "always" : "never";
    strip_first_ = scheme != "never";
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i) {
      std::string& t = tokens[i];
      std::string out;
      size_t pos = 0;
      while (true) {
        const size_t f = t.find(replacement_, pos);
        out.append(t, pos, f == std::string::npos ? std::string::npos : f - pos);
        if (f == std::string::npos) break;
        if (!(i == 0 && strip_first_)) out.push_back(' ');
        pos = f + replacement_.size();
      }
      t = std::move(out);
    }
  }

 private:
  std::string replacement_;
  bool strip_first_;
};

class BPEDecoder : public Decoder {
 public:
  explicit BPEDecoder(const Json& j) : suffix_(j.value("suffix", "</w>")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (size_t i = 0; i < tokens.size(); ++i)
      tokens[i] = replace_all(tokens[i], suffix_, i + 1 == tokens.size() ? "" : " ");
  }

 private:
  std::string suffix_;
};

class ByteFallbackDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::vector<std::string> out;
    std::string pending;
    size_t pending_count = 0;
    auto flush = [&] {
      if (!pending_count) return;
      if (find_invalid_utf8(pending) == std::string_view::npos) {
        out.push_back(pending);
      } else {
        for (size_t k = 0; k < pending_count; ++k) out.push_back("\xEF\xBF\xBD");
      }
      pending.clear();
      pending_count = 0;
    };
    for (auto& t : tokens) {
      if (t.size() == 6 && t.compare(0, 3, "<0x") == 0 && t[5] == '>') {
        const std::string hex = t.substr(3, 2);
        char* end = nullptr;
        const long v = std::strtol(hex.c_str(), &end, 16);
        if (end == hex.c_str() + 2) {
          pending.push_back(static_cast<char>(v));
          ++pending_count;
          continue;
        }
      }
      flush();
      out.push_back(std::move(t));
    }
    flush();
    tokens = std::move(out);
  }
};

class FuseDecoder : public Decoder {
 public:
  void decode_chain(std::vector<std::string>& tokens) const override {
    std::string all;
    for (const auto& t : tokens) all += t;
    tokens.assign(1, std::move(all));
  }
};

class StripDecoder : public Decoder {
 public:
  explicit StripDecoder(const Json& j) : start_(j.value("start", size_t{0})), stop_(j.value("stop", size_t{0})) {
    const std::string c = j.value("content", " ");
    size_t i = 0;
    content_ = c.empty() ? U' ' : next_char(c, i);
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::u32string cs;
      for (size_t i = 0; i < t.size();) cs.push_back(next_char(t, i));
      size_t b = 0, e = cs.size();
      for (size_t k = 0; k < start_ && b < e && cs[b] == content_; ++k) ++b;
      for (size_t k = 0; k < stop_ && e > b && cs[e - 1] == content_; ++k) --e;
      std::string out;
      for (size_t k = b; k < e; ++k) append_utf8(out, cs[k]);
      t = std::move(out);
    }
  }

 private:
  char32_t content_;
  size_t start_, stop_;
};

class ReplaceDecoder : public Decoder {
 public:
  ReplaceDecoder(const Json& j, const LoadContext& ctx) : pattern_(j.at("pattern"), ctx), content_(j.value("content", "")) {}
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (auto& t : tokens) {
      std::string out;
      for (const Piece& p : pattern_.find(t)) {
        if (p.is_match) out += content_;
        else out.append(t, p.begin, p.end - p.begin);
      }
      t = std::move(out);
    }
  }

 private:
  Pattern pattern_;
  std::string content_;
};

class DecoderSequence : public Decoder {
 public:
  DecoderSequence(const Json& j, const LoadContext& ctx) {
    for (const auto& d : j.at("decoders")) parts_.push_back(make_decoder(d, ctx));
  }
  void decode_chain(std::vector<std::string>& tokens) const override {
    for (const auto& p : parts_) p->decode_chain(tokens);
  }

 private:
  std::vector<std::unique_ptr<Decoder>> parts_;
};

}  // namespace

std::unique_ptr<PostProcessor> make_post_processor(const Json& j, const LoadContext& ctx) {
  if (j.is_null()) return nullptr;
  const std::string type = json_type(j);
  if (type == "TemplateProcessing") return std::make_unique<Template>(j, ctx);
  if (type == "BertProcessing") return std::make_unique<ClsSep>(j, false);
  if (type == "RobertaProcessing") return std::make_unique<ClsSep>(j, true);
  if (type == "ByteLevel") return std::make_unique<ByteLevelProcessor>(j);
  if (type == "Sequence") return std::make_unique<ProcessorSequence>(j, ctx);
  ctx.fail("unknown post_processor type '" + type + "'");
}

std::unique_ptr<Decoder> make_decoder(const Json& j, const LoadContext& ctx) {
  if (j.is_null()) return nullptr;
  const std::string type = json_type(j);
  if (type == "WordPiece") return std::make_unique<WordPieceDecoder>(j);
  if (type == "ByteLevel") return std::make_unique<ByteLevelDecoder>();
  if (type == "Metaspace") return std::make_unique<MetaspaceDecoder>(j);
  if (type == "BPEDecoder") return std::make_unique<BPEDecoder>(j);
  if (type == "ByteFallback") return std::make_unique<ByteFallbackDecoder>();
  if (type == "Fuse") return std::make_unique<FuseDecoder>();
  if (type == "Strip") return std::make_unique<StripDecoder>(j);
  if (type == "Replace") return std::make_unique<ReplaceDecoder>(j, ctx);
  if (type == "Sequence") return std::make_unique<DecoderSequence>(j, ctx);
  ctx.fail("unknown decoder type '" + type + "'");
}

}  // namespace trex::tokenizers::detail
