// Latency of an ONNX model in ONNX Runtime, measured the same way everywhere (`trex bench`, `trex export
// --report`): one session with fixed intra-op threads (sequential execution, one inter-op thread), inputs made
// from the model's declared inputs (trex.inputs metadata) or, for other exporters' files, from the graph's input
// types with the symbolic dims set from batch / seq / past; warm-up runs excluded; every timed run kept, and the
// median with its spread (p10/p90, min/max) reported.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

namespace trex {

struct BenchOptions {
  int64_t batch = 1;
  int64_t seq = 128;
  int64_t past = 0;    // past_sequence_length of models with a KV cache (random cache contents)
  int threads = 1;     // intra-op threads (fixed: ONNX Runtime's default depends on the machine)
  int repeats = 10;    // timed runs
  int warmup = 3;      // untimed runs first
  bool padded = false; // pad half of the last row of masks (batch > 1)
  uint64_t seed = 1234;
  // Exclusive upper bounds of integer inputs; bounds read off the graph (sample_input_limits) are added.
  std::map<std::string, int64_t> input_limits;
};

struct BenchResult {
  std::filesystem::path model;
  std::vector<double> runs_ms;  // every timed run, in order
  double median_ms = 0, p10_ms = 0, p90_ms = 0, min_ms = 0, max_ms = 0;
  double load_ms = 0;
  int64_t batch = 0, seq = 0, past = 0;
  int threads = 0;
  // "input_ids int64 [1, 128], attention_mask int64 [1, 128]"
  std::string inputs;
  // bench_interleaved: the run-by-run speed-up over the first model (its run i / this run i): median, min, max;
  // -1 when not measured that way.
  double speedup_median = -1, speedup_min = -1, speedup_max = -1;
  double sequences_per_s() const { return median_ms > 0 ? 1000.0 * static_cast<double>(batch) / median_ms : 0; }
  double tokens_per_s() const { return sequences_per_s() * static_cast<double>(seq); }
  std::string json() const;  // one JSON object (no trailing newline)
};

// Median / percentile of samples (linear interpolation between order statistics, as numpy's default).
double percentile(std::vector<double> samples, double q);

// Throws InputError (unreadable model, external data outside its folder, inputs too large to feed) or
// VerificationError (ONNX Runtime cannot load or run it).
BenchResult bench_model(const std::filesystem::path& model, const BenchOptions& options);

// Several models measured together: all sessions open at once, warm-up runs each, then `repeats` rounds in
// which every model runs once, the order rotating each round, so that load from other processes, which comes
// and goes, hits every model alike; speed-ups are paired run by run (see BenchResult). Holds every model in
// memory at once: for large models, bench_model one at a time.
std::vector<BenchResult> bench_interleaved(const std::vector<std::filesystem::path>& models, const BenchOptions& options);

// A text table, one row per (label, result): median, p10-p90, min-max, throughput, and the speed-up relative
// to the first row (paired, with its min-max, when measured interleaved).
std::string bench_table(const std::vector<std::pair<std::string, BenchResult>>& rows);

}  // namespace trex
