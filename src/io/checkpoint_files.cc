#include "io/checkpoint_files.h"

namespace trex {

const char* const kTokenizerFiles[] = {
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.txt",
    "vocab.json",     "merges.txt",            "tokenizer.model",         "spiece.model",      "sentencepiece.bpe.model",
    "source.spm",     "target.spm",            "chat_template.jinja",     nullptr,
};

}  // namespace trex
