// The tokenizer.json components (normalizers, pre-tokenizers, models, post-processors, decoders) behind small
// interfaces, each built from its JSON object by a factory that refuses unknown types with the type's name.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/text.h"
#include "tokenizers/tokenizer.h"

namespace trex::tokenizers::detail {

using Json = nlohmann::json;

// Context for error messages: the file the component comes from.
struct LoadContext {
  std::string file;
  [[noreturn]] void fail(const std::string& problem) const;
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(NormalizedString& s) const = 0;
};
std::unique_ptr<Normalizer> make_normalizer(const Json& j, const LoadContext& ctx);
std::unique_ptr<Normalizer> make_precompiled(const Json& j, const LoadContext& ctx);  // precompiled.cc

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  // Splits each piece of `splits` further (the pieces are untokenized parts of the input).
  virtual void pre_tokenize(std::vector<NormalizedString>& splits) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const Json& j, const LoadContext& ctx);

struct Token {
  uint32_t id;
  std::string value;
  size_t begin, end;  // normalized bytes within the piece
};

class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(const std::string& piece, std::vector<Token>& out) const = 0;
  virtual std::optional<uint32_t> token_to_id(std::string_view token) const = 0;
  virtual const std::string* id_to_token(uint32_t id) const = 0;
  virtual size_t vocab_size() const = 0;
};
std::unique_ptr<Model> make_model(const Json& j, const LoadContext& ctx);

// An encoding under construction (one sequence).
struct Enc {
  std::vector<int64_t> ids, type_ids, special;
  std::vector<int64_t> word_ids, sequence_ids;  // -1: none (special tokens)
  std::vector<std::string> tokens;
  std::vector<std::pair<size_t, size_t>> offsets;
};

// Post-processors work on the list of encodings (one per sequence, or pieces of the final layout, as the
// reference's process_encodings); the result is their concatenation.
class PostProcessor {
 public:
  virtual ~PostProcessor() = default;
  virtual size_t added_tokens(bool pair) const = 0;
  virtual void process(std::vector<Enc>& encs, bool add_special_tokens) const = 0;
};
std::unique_ptr<PostProcessor> make_post_processor(const Json& j, const LoadContext& ctx);

class Decoder {
 public:
  virtual ~Decoder() = default;
  virtual void decode_chain(std::vector<std::string>& tokens) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const Json& j, const LoadContext& ctx);

// Shared helpers.
std::string json_type(const Json& j);
SplitBehavior parse_behavior(const Json& j, const LoadContext& ctx);
// The pattern of Split / Replace: {"String": s} or {"Regex": r}.
class Pattern {
 public:
  Pattern(const Json& j, const LoadContext& ctx);
  ~Pattern();
  Pattern(Pattern&&) noexcept;
  // Pieces covering `text`, matches flagged.
  std::vector<Piece> find(const std::string& text) const;

 private:
  std::string literal_;
  struct Regex;
  std::unique_ptr<Regex> regex_;
};
// GPT-2's byte <-> printable-char table.
char32_t byte_to_char(uint8_t b);
int char_to_byte(char32_t c);  // -1 when not a byte char
// The GPT-2 split pattern hand-coded: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::vector<Piece> gpt2_pieces(const std::string& text);

}  // namespace trex::tokenizers::detail
