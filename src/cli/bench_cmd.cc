// `trex bench MODEL.onnx...`: latency of any ONNX file in ONNX Runtime (src/runtime/bench.h): one session,
// fixed intra-op threads, warm-up runs excluded, median of the timed runs with its spread. Several models are
// measured in turn, on inputs drawn from the same seed, one session open at a time; the table shows each one's
// speed relative to the first.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <functional>
#include <iostream>
#include <memory>
#include <nlohmann/json.hpp>

#include "cli/numbers.h"
#include "runtime/bench.h"
#include "util/error.h"

namespace {

struct BenchArgs {
  std::vector<std::string> models;
  trex::BenchOptions o;
  int64_t vocab = 0;
  bool json = false, one_at_a_time = false;
};

int run_bench(const BenchArgs& a) {
  trex::cli::check_sample_tokens(a.o.batch, a.o.seq + a.o.past, "--batch x (--seq + --past)");
  trex::BenchOptions o = a.o;
  if (a.vocab > 0) o.input_limits["input_ids"] = a.vocab;
  std::vector<std::pair<std::string, trex::BenchResult>> rows;
  if (a.one_at_a_time || a.models.size() == 1) {
    for (const auto& m : a.models) rows.emplace_back(m, trex::bench_model(m, o));
  } else {
    std::vector<std::filesystem::path> paths(a.models.begin(), a.models.end());
    auto results = trex::bench_interleaved(paths, o);
    for (size_t i = 0; i < results.size(); ++i) rows.emplace_back(a.models[i], std::move(results[i]));
  }
  if (a.json) {
    std::string s = "[";
    for (size_t i = 0; i < rows.size(); ++i) s += (i ? ",\n " : "") + rows[i].second.json();
    std::cout << s << "]\n";
    return 0;
  }
  const auto& first = rows.front().second;
  std::printf("ONNX Runtime CPU, batch %lld x seq %lld%s, %d intra-op thread%s, %d warm-up + %d timed runs each%s\n",
              static_cast<long long>(o.batch), static_cast<long long>(o.seq),
              o.past ? (" + past " + std::to_string(o.past)).c_str() : "", o.threads, o.threads == 1 ? "" : "s",
              o.warmup, o.repeats,
              rows.size() > 1 && !a.one_at_a_time ? " (interleaved, order rotating; speed-ups paired run by run)" : "");
  std::printf("inputs: %s\n", first.inputs.c_str());
  std::cout << trex::bench_table(rows);
  for (const auto& [label, r] : rows) {
    std::string runs;
    char buf[32];
    for (double ms : r.runs_ms) {
      std::snprintf(buf, sizeof buf, "%s%.3f", runs.empty() ? "" : " ", ms);
      runs += buf;
    }
    std::printf("runs ms %s: %s\n", label.c_str(), runs.c_str());
  }
  return 0;
}

}  // namespace

CLI::App* add_bench_command(CLI::App& app, std::function<int()>* action) {
  auto args = std::make_shared<BenchArgs>();
  auto* b = app.add_subcommand("bench", "Latency of ONNX models in ONNX Runtime (median of repeated runs, spread)");
  b->add_option("models", args->models, "ONNX model(s) to time (any exporter; the first is the table's baseline)")
      ->required();
  b->add_option("--batch", args->o.batch, "Batch size for symbolic batch dims (default 1)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  b->add_option("--seq", args->o.seq, "Sequence length for other symbolic dims (default 128)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  b->add_option("--past", args->o.past, "past_sequence_length of models with a KV cache (default 0: prefill)")
      ->check(trex::cli::integer_in(0, trex::cli::kMaxSampleTokens));
  b->add_option("--threads", args->o.threads, "Intra-op threads (default 1)")->check(trex::cli::integer_in(1, 1024));
  b->add_option("--repeats", args->o.repeats, "Timed runs (default 10)")->check(trex::cli::integer_in(1, 100000));
  b->add_option("--warmup", args->o.warmup, "Untimed runs first (default 3)")->check(trex::cli::integer_in(0, 100000));
  b->add_option("--vocab", args->vocab,
                "Random input_ids in [0, VOCAB) (default: the size of the table input_ids index, else 100)")
      ->check(trex::cli::integer_in(1, int64_t{1} << 31));
  b->add_flag("--padded", args->o.padded, "Pad half of the last row of attention masks (batch > 1)");
  b->add_flag("--one-at-a-time", args->one_at_a_time,
              "Measure the models one after the other, one session open at a time (large models), instead of "
              "interleaved run by run with all sessions open");
  b->add_flag("--json", args->json, "Print the results as JSON (every run's time included)");
  b->callback([args, action] { *action = [args] { return run_bench(*args); }; });
  return b;
}
