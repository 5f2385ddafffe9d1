// `trex tokenize DIR`: lines on stdin (split on '\n' only) → one JSON array of ids per line, special tokens added
// as the tokenizer's post-processor adds them (--offsets: a JSON object with ids, tokens and char offsets;
// --pairs: JSON [text, pair] lines; --decode: JSON arrays of ids in, decoded text out).
// The command runs from its CLI11 callback and exits there, so main.cc only registers it.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/common.h"
#include "tokenizers/tokenizer.h"
#include "util/error.h"

namespace {

struct TokenizeArgs {
  std::string dir, windows;
  bool no_special = false, offsets = false, no_padding = false, decode = false, keep_special = false, pairs = false;
};

void append_int(std::string& out, int64_t v) {
  char buf[24];
  const int n = std::snprintf(buf, sizeof buf, "%lld", static_cast<long long>(v));
  out.append(buf, static_cast<size_t>(n));
}

nlohmann::json encoding_json(const trex::tokenizers::Encoding& e, size_t n) {
  nlohmann::json j;
  auto head = [n](const auto& v) { return std::vector<typename std::decay_t<decltype(v)>::value_type>(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(n)); };
  j["ids"] = head(e.ids);
  j["tokens"] = head(e.tokens);
  j["type_ids"] = head(e.type_ids);
  nlohmann::json offs = nlohmann::json::array(), words = nlohmann::json::array(), seqs = nlohmann::json::array();
  for (size_t i = 0; i < n; ++i) {
    offs.push_back({e.offsets[i].first, e.offsets[i].second});
    words.push_back(e.word_ids[i] < 0 ? nlohmann::json() : nlohmann::json(e.word_ids[i]));
    seqs.push_back(e.sequence_ids[i] < 0 ? nlohmann::json() : nlohmann::json(e.sequence_ids[i]));
  }
  j["offsets"] = std::move(offs);
  j["word_ids"] = std::move(words);
  j["sequence_ids"] = std::move(seqs);
  return j;
}

size_t unpadded_length(const trex::tokenizers::Encoding& e, bool no_padding) {
  size_t n = e.ids.size();
  if (no_padding)
    while (n > 0 && e.attention_mask[n - 1] == 0) --n;
  return n;
}

int run_tokenize(const TokenizeArgs& a) {
  size_t window_max = 0, window_stride = 0;
  if (!a.windows.empty()) {
    if (!a.pairs) throw trex::UsageError("--windows needs --pairs");
    if (std::sscanf(a.windows.c_str(), "%zu,%zu", &window_max, &window_stride) != 2)
      throw trex::UsageError("--windows must be MAX_LENGTH,STRIDE, got '" + a.windows + "'");
  }
  using trex::tokenizers::OffsetUnit;
  auto tok = trex::tokenizers::Tokenizer::load(a.dir);
  std::ios::sync_with_stdio(false);
  std::string line, out;
  size_t line_no = 0;
  while (std::getline(std::cin, line)) {
    ++line_no;
    if (a.decode) {
      std::vector<int64_t> ids;
      try {
        ids = nlohmann::json::parse(line).get<std::vector<int64_t>>();
      } catch (const nlohmann::json::exception&) {
        throw trex::InputError("stdin line " + std::to_string(line_no) + ": expected a JSON array of token ids");
      }
      out = nlohmann::json(tok.decode(ids, !a.keep_special)).dump(-1, ' ', false,
                                                                  nlohmann::json::error_handler_t::replace) + "\n";
      std::fwrite(out.data(), 1, out.size(), stdout);
      continue;
    }
    trex::tokenizers::Encoding e;
    try {
      if (a.pairs) {
        std::vector<std::string> texts;
        try {
          texts = nlohmann::json::parse(line).get<std::vector<std::string>>();
        } catch (const nlohmann::json::exception&) {
        }
        if (texts.size() != 2) throw trex::InputError("expected a JSON array of two strings");
        if (window_max) {
          nlohmann::json arr = nlohmann::json::array();
          for (const auto& w : tok.encode_pair_windows(texts[0], texts[1], window_max, window_stride, !a.no_special,
                                                       OffsetUnit::kChar))
            arr.push_back(encoding_json(w, unpadded_length(w, a.no_padding)));
          out = arr.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
          std::fwrite(out.data(), 1, out.size(), stdout);
          continue;
        }
        e = tok.encode_pair(texts[0], texts[1], !a.no_special, OffsetUnit::kChar);
      } else {
        e = tok.encode(line, !a.no_special, OffsetUnit::kChar);
      }
    } catch (const trex::InputError& err) {
      throw trex::InputError("stdin line " + std::to_string(line_no) + ": " + err.what());
    }
    const size_t n = unpadded_length(e, a.no_padding);
    out.clear();
    if (!a.offsets) {
      out.push_back('[');
      for (size_t i = 0; i < n; ++i) {
        if (i) out.push_back(',');
        append_int(out, e.ids[i]);
      }
      out += "]\n";
    } else {
      out = encoding_json(e, n).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
    }
    std::fwrite(out.data(), 1, out.size(), stdout);
  }
  return 0;
}

}  // namespace

CLI::App* add_tokenize_command(CLI::App& app) {
  auto args = std::make_shared<TokenizeArgs>();
  auto* t = app.add_subcommand("tokenize", "Tokenize lines from stdin with a checkpoint's tokenizer.json (ids as JSON)");
  t->add_option("dir", args->dir, "Folder with tokenizer.json (or the tokenizer.json file)")->required();
  t->add_flag("--no-special-tokens", args->no_special, "Do not add the post-processor's special tokens");
  t->add_flag("--offsets", args->offsets,
              "Print {\"ids\", \"tokens\", \"type_ids\", \"offsets\", \"word_ids\", \"sequence_ids\"} per line; "
              "offsets are [start, end) character offsets");
  t->add_flag("--no-padding", args->no_padding, "Drop the padding that tokenizer.json's padding setting adds");
  t->add_flag("--pairs", args->pairs,
              "Each stdin line is a JSON array [text, pair] encoded as a sequence pair (question + context)");
  t->add_option("--windows", args->windows,
                 "With --pairs: MAX_LENGTH,STRIDE - overlapping windows over the second text (long QA contexts); "
                 "prints a JSON array of --offsets objects per line");
  t->add_flag("--decode", args->decode,
              "The other way: each stdin line is a JSON array of ids; print the decoded text as a JSON string");
  t->add_flag("--keep-special-tokens", args->keep_special, "With --decode: keep special tokens in the text");
  t->callback([args] { trex::cli::run_and_exit([&] { return run_tokenize(*args); }); });
  return t;
}
