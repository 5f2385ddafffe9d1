// `trex run DIR [--pipeline P] [TEXT...]`: text in, the pipeline's answer out, from a folder trex exported.
// Inputs are the TEXT arguments, else the lines of stdin (split on '\n' only). Output: one line per input — the
// answer as JSON with --json (the keys transformers' pipeline() uses), else a short human-readable form.
// The command runs from its CLI11 callback and exits there, so main.cc only registers it.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "cli/common.h"
#include "pipelines/pipeline.h"
#include "util/error.h"

namespace {

struct RunArgs {
  std::string dir;
  std::vector<std::string> texts;
  trex::pipelines::RunOptions o;
  bool json = false, stream = false;
};

std::string dump(const nlohmann::json& j) { return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }

// Without --json: the text of generation answers, the JSON of the others.
std::string human(const nlohmann::json& answer) {
  auto text_of = [](const nlohmann::json& a) -> const nlohmann::json* {
    if (!a.is_object()) return nullptr;
    for (const char* k : {"generated_text", "translation_text", "summary_text"})
      if (a.contains(k) && a[k].is_string()) return &a[k];
    return nullptr;
  };
  if (const auto* t = text_of(answer)) return t->get<std::string>();
  if (answer.is_array() && answer.size() == 1)
    if (const auto* t = text_of(answer[0])) return t->get<std::string>();
  return dump(answer);
}

int run(RunArgs& a) {
  std::vector<std::string> inputs = a.texts;
  if (inputs.empty()) {
    std::string line;
    while (std::getline(std::cin, line)) inputs.push_back(line);
  }
  if (a.stream && !a.json) {
    a.o.on_text = [](size_t, std::string_view piece) {
      std::fwrite(piece.data(), 1, piece.size(), stdout);
      std::fflush(stdout);
    };
  }
  auto pipeline = trex::pipelines::make_pipeline(a.dir, a.o);
  // Chunks of inputs (batch_size, or more for pipelines that length-sort them), printed as they finish, so long
  // inputs on stdin stream out. Streamed text comes one input at a time, so each answer's line ends before the
  // next one starts.
  const size_t step = a.o.on_text ? 1
                                  : std::max<size_t>(1, pipeline->inputs_per_call(
                                                            static_cast<size_t>(std::max(1, a.o.batch_size))));
  for (size_t begin = 0; begin < inputs.size(); begin += step) {
    std::vector<std::string> batch(inputs.begin() + static_cast<std::ptrdiff_t>(begin),
                                   inputs.begin() + static_cast<std::ptrdiff_t>(std::min(inputs.size(), begin + step)));
    for (const auto& answer : pipeline->run(batch)) {
      std::string out = a.json ? dump(answer) : (a.stream ? std::string() : human(answer));
      out += "\n";
      std::fwrite(out.data(), 1, out.size(), stdout);
    }
  }
  return 0;
}

}  // namespace

CLI::App* add_run_command(CLI::App& app) {
  auto a = std::make_shared<RunArgs>();
  auto& o = a->o;
  auto* r = app.add_subcommand("run", "Run a pipeline on text with a folder trex exported: the answer transformers' "
                                      "pipeline() gives, without Python");
  r->add_option("dir", a->dir, "Folder written by trex export (model(s), config.json, tokenizer files)")->required();
  r->add_option("text", a->texts, "Inputs (default: the lines of stdin)");
  r->add_option("--pipeline", o.task, "Pipeline (default: the one the folder was exported for)");
  r->add_flag("--json", a->json, "One JSON answer per line, with the keys transformers' pipeline() uses");
  r->add_option("--threads", o.threads, "ONNX Runtime intra-op threads (0: its default)")->check(CLI::NonNegativeNumber);
  r->add_option("--batch-size", o.batch_size, "Inputs run together")->check(CLI::PositiveNumber);
  r->add_option("--model-file", o.model_file,
                "Encoder pipelines: the model file of DIR to run, e.g. model-quantized.onnx (default: model.onnx)");
  auto* g = r->add_option_group("classification, fill-mask, question-answering");
  g->add_option("--top-k", o.top_k, "Answers per input (default: the pipeline's)");
  g->add_option("--function-to-apply", o.function_to_apply, "text-classification: softmax, sigmoid or none")
      ->check(CLI::IsMember({"", "softmax", "sigmoid", "none"}));
  g->add_option("--aggregation-strategy", o.aggregation_strategy, "token-classification: none, simple, first, average, max")
      ->check(CLI::IsMember({"none", "simple", "first", "average", "max"}));
  g->add_option("--context", o.context, "question-answering: the context the questions are asked about");
  g->add_option("--max-answer-len", o.max_answer_len, "question-answering: longest answer in tokens")->check(CLI::PositiveNumber);
  g->add_option("--max-seq-len", o.max_seq_len, "question-answering: window length over long contexts")->check(CLI::PositiveNumber);
  g->add_option("--doc-stride", o.doc_stride, "question-answering: overlap of the windows")->check(CLI::NonNegativeNumber);
  auto* gen = r->add_option_group("generation (text-generation, translation, summarization)");
  gen->add_option("--max-new-tokens", o.max_new_tokens, "Tokens to generate (default: generation_config.json's)");
  gen->add_flag("--do-sample", o.do_sample, "Sample instead of greedy / beam search");
  gen->add_option("--temperature", o.temperature, "Sampling temperature")->check(CLI::PositiveNumber);
  gen->add_option("--sample-top-k", o.sample_top_k, "Sampling: keep the k most likely tokens (0: all)")->check(CLI::NonNegativeNumber);
  gen->add_option("--top-p", o.top_p, "Sampling: nucleus probability mass")->check(CLI::Range(0.0, 1.0));
  gen->add_option("--repetition-penalty", o.repetition_penalty, "Penalty for tokens already present")->check(CLI::PositiveNumber);
  gen->add_option("--num-beams", o.num_beams, "Beam search width (1: greedy; default: generation_config.json's, 4 for seq2seq pipelines)")->check(CLI::NonNegativeNumber);
  gen->add_option("--length-penalty", o.length_penalty, "Beam search length penalty");
  gen->add_option("--seed", o.seed, "Sampling seed");
  gen->add_flag("--stream", a->stream, "Print generated text as it comes (without --json)");
  gen->add_option("--min-new-tokens", o.min_new_tokens, "No eos before this many new tokens")->check(CLI::NonNegativeNumber);
  gen->add_flag("!--new-text-only", o.return_full_text, "text-generation: the continuation without the prompt (return_full_text=False)");
  gen->add_option("--no-repeat-ngram-size", o.no_repeat_ngram_size, "No n-gram of this size twice (0: off; default: generation_config.json's)")
      ->check(CLI::NonNegativeNumber);
  gen->add_flag("--timing", o.timing, "Print the timings of each generation (prefill, decode tokens/s) as JSON on stderr");
  r->callback([a] { trex::cli::run_and_exit([&] { return run(*a); }); });
  return r;
}
