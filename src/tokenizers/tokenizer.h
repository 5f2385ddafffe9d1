// Public API of trex's tokenizers: Hugging Face `tokenizer.json` files read and run in C++ (no Python).
//   auto tok = trex::tokenizers::Tokenizer::load("path/to/checkpoint");   // or the tokenizer.json itself
//   auto enc = tok.encode("Hello world", /*add_special_tokens=*/true);    // ids, tokens, offsets, masks
//   std::string text = tok.decode(generated_ids, /*skip_special_tokens=*/true);
// Offsets are byte offsets into the UTF-8 input by default (char offsets, as the Python package gives them,
// with `OffsetUnit::kChar`). Errors are trex::InputError (bad tokenizer.json, unsupported component, invalid
// UTF-8 input) with the file or the problem named.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace trex::tokenizers {

enum class OffsetUnit { kByte, kChar };

struct Encoding {
  std::vector<int64_t> ids;
  std::vector<int64_t> type_ids;
  std::vector<std::string> tokens;
  std::vector<std::pair<size_t, size_t>> offsets;  // [start, end) in the input; (0, 0) for added special tokens
  std::vector<int64_t> attention_mask;
  std::vector<int64_t> special_tokens_mask;
  std::vector<int64_t> word_ids;      // index of the pre-tokenized word of each token; -1 for special tokens
  std::vector<int64_t> sequence_ids;  // 0 or 1 (second text of a pair); -1 for special tokens
};

class TokenizerImpl;
class SpmTokenizer;

class Tokenizer {
 public:
  // DIR holding tokenizer.json, or the path of a tokenizer.json file. A folder without tokenizer.json may hold
  // SentencePiece files instead (T5 spiece.model; Llama tokenizer.model; Marian source.spm + target.spm +
  // vocab.json): see spm.h.
  static Tokenizer load(const std::filesystem::path& path);
  static Tokenizer from_json(const std::string& json_text, const std::string& name = "tokenizer.json");

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // Applies the file's truncation and padding settings (single sequence; batch padding in encode_batch).
  Encoding encode(std::string_view text, bool add_special_tokens = true, OffsetUnit unit = OffsetUnit::kByte) const;
  // Two sequences (question + context, sentence pairs): offsets of the second are into `pair`.
  Encoding encode_pair(std::string_view text, std::string_view pair, bool add_special_tokens = true,
                       OffsetUnit unit = OffsetUnit::kByte) const;
  // Question + long context: windows of at most max_length tokens whose context parts overlap by `stride`
  // tokens (the reference's truncation only_second + stride + overflowing tokens; the file's truncation setting
  // is not used, its padding is).
  std::vector<Encoding> encode_pair_windows(std::string_view text, std::string_view pair, size_t max_length,
                                            size_t stride, bool add_special_tokens = true,
                                            OffsetUnit unit = OffsetUnit::kByte) const;
  std::vector<Encoding> encode_batch(const std::vector<std::string>& texts, bool add_special_tokens = true,
                                     OffsetUnit unit = OffsetUnit::kByte) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens = true) const;

  // Tokens (as the vocabulary spells them) joined into text by the tokenizer's decoder, as transformers'
  // convert_tokens_to_string does (token-classification words).
  std::string tokens_to_string(std::vector<std::string> tokens) const;

  // What transformers does before each call: the file's truncation replaced by the caller's (longest_first,
  // max_length tokens with the special tokens; 0: none) and its padding dropped (callers pad batches themselves).
  void set_truncation(size_t max_length, bool left = false);
  void disable_padding();

  std::optional<int64_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int64_t id) const;  // "" when out of range
  size_t vocab_size() const;                  // model vocabulary + added tokens

 private:
  explicit Tokenizer(std::unique_ptr<TokenizerImpl> impl);
  explicit Tokenizer(std::unique_ptr<SpmTokenizer> spm);
  std::unique_ptr<TokenizerImpl> impl_;
  std::unique_ptr<SpmTokenizer> spm_;  // set instead of impl_ for SentencePiece folders
};

}  // namespace trex::tokenizers
