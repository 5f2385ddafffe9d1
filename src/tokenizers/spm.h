// Folders with SentencePiece model files and no tokenizer.json, read through Debian's libsentencepiece, encoded
// and decoded as transformers' slow tokenizers do:
//   T5-style     spiece.model                           ids from the model, </s> appended (T5Tokenizer), plus
//                                                       <extra_id_N> tokens (tokenizer_config.json extra_ids,
//                                                       100 by default);
//   Marian-style source.spm + target.spm + vocab.json   pieces from source.spm, ids from vocab.json (unknown
//                                                       pieces -> <unk>), </s> appended; decoded with target.spm
//                                                       (MarianTokenizer);
//   Llama-style  tokenizer.model                        ids from the model, <s> prepended (LlamaTokenizer, legacy;
//                                                       add_bos_token / add_eos_token of tokenizer_config.json).
// Special tokens written in the text are split out first, as the slow tokenizers' added-token split does.
#pragma once

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizers/tokenizer.h"

namespace trex::tokenizers {

class SpmTokenizer {
 public:
  // nullptr when `dir` has none of the files above. Throws InputError naming the file when one is unreadable,
  // too large or not a SentencePiece model.
  static std::unique_ptr<SpmTokenizer> load_folder(const std::filesystem::path& dir);
  ~SpmTokenizer();

  Encoding encode(std::string_view text, std::optional<std::string_view> pair, bool add_special_tokens,
                  OffsetUnit unit) const;
  std::string decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const;
  std::optional<int64_t> token_to_id(std::string_view token) const;
  std::string id_to_token(int64_t id) const;
  size_t vocab_size() const;

  struct State;

 private:
  explicit SpmTokenizer(std::unique_ptr<State> s);
  std::unique_ptr<State> s_;
};

}  // namespace trex::tokenizers
