// Names of the files that make up a checkpoint folder besides config.json and the weights.
#pragma once

namespace trex {

// Tokenizer and preprocessing files (copied beside exported models, fetched by downloads), nullptr-terminated.
extern const char* const kTokenizerFiles[];

}  // namespace trex
