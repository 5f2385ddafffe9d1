// Unit tests of the tokenizers: alignments through normalization, the GPT-2 split, each model on a tiny
// vocabulary, post-processing, truncation/padding, decoders, and the errors.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <random>

#include "tokenizers/components.h"
#include "tokenizers/tokenizer.h"
#include "util/error.h"

using trex::tokenizers::OffsetUnit;
using trex::tokenizers::Tokenizer;
using nlohmann::json;
namespace d = trex::tokenizers::detail;

namespace {

Tokenizer make(json j) {
  for (const char* k : {"normalizer", "pre_tokenizer", "post_processor", "decoder", "truncation", "padding"})
    if (!j.contains(k)) j[k] = nullptr;
  if (!j.contains("added_tokens")) j["added_tokens"] = json::array();
  return Tokenizer::from_json(j.dump(), "test.json");
}

json wordpiece_model() {
  return {{"type", "WordPiece"},
          {"unk_token", "[UNK]"},
          {"continuing_subword_prefix", "##"},
          {"max_input_chars_per_word", 100},
          {"vocab", {{"[UNK]", 0}, {"[CLS]", 1}, {"[SEP]", 2}, {"hello", 3}, {"world", 4}, {"##s", 5}, {"!", 6},
                     {"cafe", 7}, {"un", 8}, {"##believ", 9}, {"##able", 10}, {"[PAD]", 11}}}};
}

json bert_json() {
  return {{"model", wordpiece_model()},
          {"normalizer", {{"type", "BertNormalizer"}, {"lowercase", true}}},
          {"pre_tokenizer", {{"type", "BertPreTokenizer"}}},
          {"post_processor", {{"type", "BertProcessing"}, {"cls", {"[CLS]", 1}}, {"sep", {"[SEP]", 2}}}},
          {"decoder", {{"type", "WordPiece"}, {"prefix", "##"}, {"cleanup", true}}},
          {"added_tokens",
           {{{"id", 1}, {"content", "[CLS]"}, {"special", true}, {"normalized", false}},
            {{"id", 2}, {"content", "[SEP]"}, {"special", true}, {"normalized", false}}}}};
}

}  // namespace

TEST(TokenizerText, Utf8Validation) {
  EXPECT_EQ(d::find_invalid_utf8("plain ascii é 😀"), std::string_view::npos);
  EXPECT_EQ(d::find_invalid_utf8("ab\xff"), 2u);
  EXPECT_EQ(d::find_invalid_utf8("\xc0\xaf"), 0u);          // overlong
  EXPECT_EQ(d::find_invalid_utf8("x\xed\xa0\x80"), 1u);     // surrogate
  EXPECT_EQ(d::find_invalid_utf8("\xf0\x9f\x98"), 0u);      // truncated
}

TEST(TokenizerText, AlignmentsFollowCharacters) {
  d::NormalizedString s("Éa");
  s.map_chars([](char32_t c, std::u32string& out) { d::push_lowercase(c, out); });
  EXPECT_EQ(s.text(), "éa");
  EXPECT_EQ(s.original_of(0, 2, {}).end, 2u);  // é (2 bytes) from É (2 bytes)
  EXPECT_EQ(s.original_of(2, 3, {}).begin, 2u);
  s.prepend("▁");
  EXPECT_EQ(s.original_of(0, 3, {}).begin, 0u);
  EXPECT_EQ(s.original_of(0, 3, {}).end, 2u);
}

TEST(TokenizerText, Gpt2Split) {
  const std::string t = "Hello world's  123 !!\n";
  std::vector<std::string> got;
  for (const auto& p : d::gpt2_pieces(t)) got.push_back(t.substr(p.begin, p.end - p.begin));
  EXPECT_EQ(got, (std::vector<std::string>{"Hello", " world", "'s", " ", " 123", " !!", "\n"}));
}

TEST(Tokenizer, BertPipelineWithOffsets) {
  Tokenizer tok = make(bert_json());
  auto e = tok.encode("Hello, CAFÉ worlds!");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 3, 0, 7, 4, 5, 6, 2}));
  EXPECT_EQ(e.tokens[3], "cafe");
  // Byte offsets into the original: "CAFÉ" is bytes 7..12 (É is 2 bytes).
  EXPECT_EQ(e.offsets[3], (std::pair<size_t, size_t>{7, 12}));
  EXPECT_EQ(e.offsets[5], (std::pair<size_t, size_t>{18, 19}));
  auto c = tok.encode("Hello, CAFÉ worlds!", true, OffsetUnit::kChar);
  EXPECT_EQ(c.offsets[3], (std::pair<size_t, size_t>{7, 11}));
  EXPECT_EQ(e.special_tokens_mask, (std::vector<int64_t>{1, 0, 0, 0, 0, 0, 0, 1}));
  EXPECT_EQ(tok.decode(e.ids), "hello [UNK] cafe worlds!");
}

TEST(Tokenizer, WordPieceGreedyAndUnknownWord) {
  Tokenizer tok = make(bert_json());
  EXPECT_EQ(tok.encode("unbelievable", false).ids, (std::vector<int64_t>{8, 9, 10}));
  EXPECT_EQ(tok.encode("unbelievablez", false).ids, (std::vector<int64_t>{0}));
}

TEST(Tokenizer, AddedTokensSplitBeforeNormalization) {
  Tokenizer tok = make(bert_json());
  auto e = tok.encode("hello[SEP]world", false);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{3, 2, 4}));
  EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{5, 10}));
}

TEST(Tokenizer, TruncationAndPadding) {
  json j = bert_json();
  j["truncation"] = {{"max_length", 4}, {"strategy", "LongestFirst"}, {"stride", 0}};
  j["padding"] = {{"strategy", {{"Fixed", 6}}}, {"direction", "Right"}, {"pad_to_multiple_of", nullptr},
                  {"pad_id", 11}, {"pad_type_id", 0}, {"pad_token", "[PAD]"}};
  Tokenizer tok = make(j);
  auto e = tok.encode("hello world hello world");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 3, 4, 2, 11, 11}));
  EXPECT_EQ(e.attention_mask, (std::vector<int64_t>{1, 1, 1, 1, 0, 0}));
}

TEST(Tokenizer, BpeMergesBothForms) {
  json vocab = {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"abc", 4}, {"<unk>", 5}};
  for (json merges : {json::array({"a b", "ab c"}), json::array({json::array({"a", "b"}), json::array({"ab", "c"})})}) {
    Tokenizer tok = make({{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", merges}, {"unk_token", "<unk>"},
                                     {"fuse_unk", true}, {"dropout", nullptr}}}});
    auto e = tok.encode("abcxyab", false);
    EXPECT_EQ(e.ids, (std::vector<int64_t>{4, 5, 3}));
    EXPECT_EQ(e.offsets[1], (std::pair<size_t, size_t>{3, 5}));
  }
}

TEST(Tokenizer, BpeByteFallback) {
  json vocab = {{"<unk>", 0}, {"a", 1}, {"<0xC3>", 2}, {"<0xA9>", 3}};
  Tokenizer tok = make({{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()},
                                   {"unk_token", "<unk>"}, {"byte_fallback", true}}},
                        {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "ByteFallback"}}, {{"type", "Fuse"}}}}}}});
  auto e = tok.encode("aé", false);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 2, 3}));
  EXPECT_EQ(tok.decode(e.ids), "aé");
}

TEST(Tokenizer, BpeDropoutRefused) {
  EXPECT_THROW(make({{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}}}, {"merges", json::array()}, {"dropout", 0.1}}}}),
               trex::InputError);
}

TEST(Tokenizer, UnigramViterbi) {
  json vocab = json::array();
  for (const auto& [piece, score] : std::vector<std::pair<std::string, double>>{
           {"<unk>", 0.0}, {"▁", -2.0}, {"▁he", -3.0}, {"llo", -3.0}, {"▁hello", -5.5}, {"h", -4.0}, {"e", -4.0},
           {"l", -4.0}, {"o", -4.0}})
    vocab.push_back(json::array({piece, score}));
  Tokenizer tok = make({{"model", {{"type", "Unigram"}, {"unk_id", 0}, {"vocab", vocab}}},
                        {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}, {"split", true}}},
                        {"decoder", {{"type", "Metaspace"}, {"replacement", "▁"}, {"prepend_scheme", "always"}}}});
  auto e = tok.encode("hello", false);
  EXPECT_EQ(e.ids, (std::vector<int64_t>{4}));  // -5.5 beats -3 + -3
  auto u = tok.encode("hexxo", false);
  EXPECT_EQ(u.tokens[1], "xx");  // unknown characters fused into one <unk>
  EXPECT_EQ(u.ids[1], 0);
  EXPECT_EQ(tok.decode(e.ids), "hello");
}

TEST(Tokenizer, ByteLevelRoundTrip) {
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) {
    std::string s;
    d::append_utf8(s, d::byte_to_char(static_cast<uint8_t>(b)));
    vocab[s] = b;
  }
  Tokenizer tok = make({{"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array()}}},
                        {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", true}}},
                        {"decoder", {{"type", "ByteLevel"}}}});
  const std::string text = "héllo 👋 world";
  auto e = tok.encode(text, false);
  EXPECT_EQ(e.ids.size(), text.size());
  EXPECT_EQ(tok.decode(e.ids), text);
  // The 4 bytes of the emoji all point at the whole character.
  EXPECT_EQ(e.offsets[8], (std::pair<size_t, size_t>{7, 11}));
}

TEST(Tokenizer, Errors) {
  EXPECT_THROW(make(bert_json()).encode("bad \xff byte"), trex::InputError);
  json j = bert_json();
  j["normalizer"] = {{"type", "Mystery"}};
  try {
    make(j);
    FAIL();
  } catch (const trex::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("test.json"), std::string::npos);
    EXPECT_NE(std::string(e.what()).find("Mystery"), std::string::npos);
  }
  j["normalizer"] = {{"type", "Precompiled"}, {"precompiled_charsmap", ""}};
  EXPECT_THROW(make(j), trex::InputError);
}

TEST(Tokenizer, PairWithLongestFirstTruncation) {
  json j = bert_json();
  j["truncation"] = {{"max_length", 7}, {"strategy", "LongestFirst"}, {"stride", 0}};
  Tokenizer tok = make(j);
  // 5 + 1 tokens, budget 7 - 3 specials = 4: the longer sequence gives way first.
  auto e = tok.encode_pair("hello world hello world hello", "world");
  EXPECT_EQ(e.ids, (std::vector<int64_t>{1, 3, 4, 3, 2, 4, 2}));
  EXPECT_EQ(e.type_ids, (std::vector<int64_t>{0, 0, 0, 0, 0, 1, 1}));
  EXPECT_EQ(e.offsets[5], (std::pair<size_t, size_t>{0, 5}));  // into the second text
}

// The Precompiled charsmap is untrusted: random tries (offsets, labels, leaf flags and values anywhere in
// [0, 2^32)) and pools must either be refused at load with an input error or normalize without reading out of
// bounds; whatever they do, alignments stay inside the input.
TEST(Tokenizer, PrecompiledHostileBlobs) {
  std::mt19937 rng(7);
  auto b64 = [](const std::string& in) {
    static const char* t = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    std::string out;
    size_t i = 0;
    for (; i + 2 < in.size(); i += 3) {
      const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8) | uint8_t(in[i + 2]);
      for (int k = 3; k >= 0; --k) out += t[(v >> (6 * k)) & 63];
    }
    if (i + 1 == in.size()) {
      const uint32_t v = uint8_t(in[i]) << 16;
      out += t[(v >> 18) & 63];
      out += t[(v >> 12) & 63];
      out += "==";
    } else if (i + 2 == in.size()) {
      const uint32_t v = (uint8_t(in[i]) << 16) | (uint8_t(in[i + 1]) << 8);
      out += t[(v >> 18) & 63];
      out += t[(v >> 12) & 63];
      out += t[(v >> 6) & 63];
      out += "=";
    }
    return out;
  };
  const std::string text = "Ab\xC3\xA9 \xEF\xBC\xA1\xE2\x91\xA0 x\xCC\x81 \xF0\x9F\x98\x80 \x01\t end";
  int refused = 0, ran = 0;
  for (int iter = 0; iter < 2000; ++iter) {
    const uint32_t n_units = rng() % 300;
    std::string blob;
    const uint32_t trie_bytes = (iter % 10 == 0) ? rng() : n_units * 4;
    for (int k = 0; k < 4; ++k) blob += char((trie_bytes >> (8 * k)) & 0xFF);
    for (uint32_t u = 0; u < n_units; ++u) {
      uint32_t v = rng();
      if (iter % 3 == 0) v = (v & ~0x3FFu) | (rng() % 2 ? 0x100u : 0) | uint8_t(text[rng() % text.size()]);
      if (iter % 3 == 1) v = ((rng() % 64) << 10) | (v & 0x3FF);
      for (int k = 0; k < 4; ++k) blob += char((v >> (8 * k)) & 0xFF);
    }
    const uint32_t pool = rng() % 40;
    for (uint32_t k = 0; k < pool; ++k) blob += (rng() % 4 == 0) ? '\0' : char('a' + rng() % 26);
    json j = {{"model", {{"type", "WordLevel"}, {"vocab", {{"[UNK]", 0}}}, {"unk_token", "[UNK]"}}},
              {"normalizer", {{"type", "Precompiled"}, {"precompiled_charsmap", b64(blob)}}}};
    try {
      Tokenizer tok = make(j);
      const auto enc = tok.encode(text, false);
      for (const auto& [b, e] : enc.offsets) {
        EXPECT_LE(b, e);
        EXPECT_LE(e, text.size());
      }
      ++ran;
    } catch (const trex::InputError& e) {
      EXPECT_NE(std::string(e.what()).find("Precompiled"), std::string::npos) << e.what();
      ++refused;
    }
  }
  EXPECT_GT(ran, 100);
  EXPECT_GT(refused, 100);
}
