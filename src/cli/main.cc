// The `trex` command: parses arguments and calls the library. No export logic lives here.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/common.h"
#include "cli/format.h"
#include "cli/numbers.h"
#include "export/export.h"
#include "io/config.h"
#include "io/hub_cache.h"
#include "runtime/bench.h"
#include "runtime/ort_optimize.h"
#include "runtime/verify.h"
#include "torchscript/torchscript_export.h"
#include "util/error.h"
#include "util/output_path.h"

// Subcommands defined in their own files.
CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* action);
CLI::App* add_tokenize_command(CLI::App& app);  // runs and exits from its own callback
CLI::App* add_run_command(CLI::App& app);       // runs and exits from its own callback
CLI::App* add_bench_command(CLI::App& app, std::function<int()>* action);

namespace {

using trex::ExitCode;

int fail(ExitCode code, const std::string& message) {
  std::cerr << "trex: error: " << trex::cli::one_line(message) << "\n";
  return static_cast<int>(code);
}

namespace fs = std::filesystem;

using trex::cli::mib;
using trex::cli::seconds;

struct ExportArgs {
  std::string model, revision, output, pipeline, static_shape, external = "auto", format, report, layout = "trex",
      triton_name, framework = "auto";
  int triton_max_batch = 16;
  int opset = trex::kDefaultOpset;
  bool no_check = false, quiet = false, optimize = false, gelu_approximation = false,
       eager_attention = false, allow_nonfinite = false;
  // --report's latency of each variant (trex bench's method); repeats 0: none.
  std::string dtype = "fp32";
  std::string latency_shape;  // B,S; default 1,128 (S capped by the model's position table)
  int latency_repeats = 10, latency_threads = 1;
  std::string quantize_mode;  // int8 (plain --quantize) or int4
  std::string int4_search = "coarse";
  int64_t block_size = 32, accuracy_level = 0;
  bool symmetric = false, asymmetric = false, no_embeddings = false, quantized_only = false, int8_accurate = false;
};

// One variant written by the export, with its accuracy and latency (--report).
struct VariantLatency {
  std::string graph, variant, accuracy;
  fs::path model;
  std::optional<trex::BenchResult> bench;
  std::string error;  // the measurement failed (the export itself stands)
};

// Latency of every variant written, measured as `trex bench` does; a failure is noted, not fatal.
std::vector<VariantLatency> measure_variants(const trex::ExportResult& r, const trex::ExportOptions& eo,
                                             const ExportArgs& a) {
  std::vector<VariantLatency> rows;
  char buf[160];
  for (const auto& gr : r.graphs) {
    const std::string g = r.graphs.size() > 1 ? gr.name : "";
    rows.push_back({g, "plain", "reference", gr.written.model_path, std::nullopt, ""});
    if (gr.optimized) {
      double worst = 0;
      if (gr.optimized_verify)
        for (const auto& o : gr.optimized_verify->outputs) worst = std::max(worst, o.max_abs_diff);
      std::snprintf(buf, sizeof buf, "max abs diff %.2e", worst);
      rows.push_back({g, "optimized", gr.optimized_verify ? buf : "-", gr.optimized->model_path, std::nullopt, ""});
    }
    if (gr.quantized)  // decoders and sets, quantized while built (accuracy: the load check only)
      rows.push_back({g, "quantized", "-", gr.quantized->model_path, std::nullopt, ""});
  }
  if (r.quantized) {
    const auto& q = *r.quantized;
    std::string acc = "-";
    if (q.comparison) {
      std::snprintf(buf, sizeof buf, "cosine %.5f (min %.5f)", q.comparison->mean_cosine, q.comparison->min_cosine);
      acc = buf;
    }
    rows.push_back({r.graphs.size() > 1 ? r.graphs.front().name : "", "quantized", acc, q.written.model_path,
                    std::nullopt, ""});
  }
  trex::BenchOptions bo;
  bo.repeats = a.latency_repeats;
  bo.threads = a.latency_threads;
  bo.warmup = 2;
  if (eo.static_shape) {
    std::tie(bo.batch, bo.seq) = *eo.static_shape;
  } else if (!a.latency_shape.empty()) {
    std::tie(bo.batch, bo.seq) = trex::cli::parse_static_shape(a.latency_shape);
  } else {
    // 1 x 128, within the model's learned positions (RoBERTa's table holds two offset rows).
    const trex::ModelConfig cfg = trex::ModelConfig::load(eo.model_dir / "config.json");
    const int64_t positions = cfg.get_int("max_position_embeddings", cfg.get_int("n_positions", 0));
    if (positions > 2) bo.seq = std::min<int64_t>(bo.seq, positions - 2);
  }
  for (auto& row : rows) {
    try {
      row.bench = trex::bench_model(row.model, bo);
    } catch (const trex::Error& e) {
      row.error = trex::cli::one_line(e.what());
    }
  }
  return rows;
}

std::string latency_table(const std::vector<VariantLatency>& rows) {
  std::string s;
  char line[512];
  if (rows.empty()) return s;
  const trex::BenchResult* first = nullptr;
  for (const auto& row : rows)
    if (row.bench) {
      first = &*row.bench;
      break;
    }
  if (first)
    std::snprintf(line, sizeof line, "latency (ONNX Runtime CPU, batch %lld x seq %lld, %d thread%s, median of %zu runs):\n",
                  static_cast<long long>(first->batch), static_cast<long long>(first->seq), first->threads,
                  first->threads == 1 ? "" : "s", first->runs_ms.size());
  else
    std::snprintf(line, sizeof line, "latency (ONNX Runtime CPU):\n");
  s += line;
  std::snprintf(line, sizeof line, "%-22s %-10s %-30s %10s %17s %9s\n", "graph", "variant", "accuracy", "median ms",
                "p10-p90 ms", "speed-up");
  s += line;
  double base = 0;
  std::string base_graph = "\x01";
  for (const auto& row : rows) {
    const std::string graph = row.graph.empty() ? row.model.filename().string() : row.graph;
    if (row.variant == "plain") {
      base = row.bench ? row.bench->median_ms : 0;
      base_graph = row.graph;
    }
    if (!row.bench) {
      std::snprintf(line, sizeof line, "%-22s %-10s %-30s not measured: %s\n", graph.c_str(), row.variant.c_str(),
                    row.accuracy.c_str(), row.error.substr(0, 200).c_str());
    } else {
      char spread[64], speed[32] = "-";
      std::snprintf(spread, sizeof spread, "%.3f-%.3f", row.bench->p10_ms, row.bench->p90_ms);
      if (base > 0 && row.graph == base_graph) std::snprintf(speed, sizeof speed, "%.2fx", base / row.bench->median_ms);
      std::snprintf(line, sizeof line, "%-22s %-10s %-30s %10.3f %17s %9s\n", graph.c_str(), row.variant.c_str(),
                    row.accuracy.c_str(), row.bench->median_ms, spread, speed);
    }
    s += line;
  }
  return s;
}

// --report: what was written, how each variant compares, how long it took (JSON).
void write_export_report(const std::string& path, const trex::ExportResult& r, int quantize_bits, double seconds,
                         const std::vector<VariantLatency>& latency) {
  using nlohmann::json;
  auto files = [&latency](const trex::WriteResult& w) {
    json j{{"model", w.model_path.string()}, {"model_bytes", w.model_bytes}};
    if (!w.data_path.empty()) j["external_data"] = {{"path", w.data_path.string()}, {"bytes", w.data_bytes}};
    for (const auto& row : latency)
      if (row.model == w.model_path)
        j["latency"] = row.bench ? json::parse(row.bench->json()) : json{{"error", row.error}};
    return j;
  };
  json j;
  j["trex_version"] = TREX_VERSION;
  j["model_type"] = r.model_type;
  j["pipeline"] = trex::task_name(r.task);
  j["seconds"] = seconds;
  j["plain"] = files(r.written);
  if (r.graphs.size() > 1) {
    j["graphs"] = json::array();
    for (const auto& gr : r.graphs) {
      json g = {{"name", gr.name}, {"plain", files(gr.written)}};
      if (gr.optimized) g["optimized"] = files(*gr.optimized);
      if (gr.optimized_verify) g["optimized"]["vs_plain"] = json::parse(gr.optimized_verify->json());
      j["graphs"].push_back(g);
    }
  }
  j["plain"]["nodes"] = r.num_nodes;
  j["unused_checkpoint_tensors"] = r.unused_tensors;
  if (r.check) {
    json outs = json::object();
    for (const auto& [name, shape] : r.check->outputs) outs[name] = shape;
    j["load_check"] = {{"ok", true}, {"load_ms", r.check->load_ms}, {"run_ms", r.check->run_ms}, {"total_ms", r.check->total_ms}, {"outputs", outs}};
  }
  if (r.optimized) {
    j["optimized"] = files(*r.optimized);
    if (r.optimized_verify) j["optimized"]["vs_plain"] = json::parse(r.optimized_verify->json());
  }
  for (size_t i = 0; i < r.graphs.size(); ++i) {
    const auto& gr = r.graphs[i];
    if (!gr.quantized && !(r.graphs.size() == 1 && gr.quantized_layers)) continue;
    json q = gr.quantized ? files(*gr.quantized) : json::object();
    q["layers_quantized"] = gr.quantized_layers;
    q["layers_float"] = gr.kept_layers;
    q["embedding_tables_quantized"] = gr.quantized_tables;
    if (gr.quantized_check) q["load_check"] = {{"ok", true}, {"run_ms", gr.quantized_check->run_ms}, {"total_ms", gr.quantized_check->total_ms}};
    if (r.graphs.size() > 1) j["graphs"][i]["quantized"] = q;
    else j["quantized"] = q;
  }
  if (r.quantized) {
    const auto& q = *r.quantized;
    j["quantized"] = files(q.written);
    // Named as for decoders' graphs (layers_quantized / layers_float, whatever the bits); int8 reports keep their
    // earlier names too.
    j["quantized"]["bits"] = quantize_bits;
    j["quantized"]["layers_quantized"] = q.report.quantized.size();
    j["quantized"]["layers_float"] = q.report.skipped.size();
    if (quantize_bits == 8) {
      j["quantized"]["layers_int8"] = q.report.quantized.size();
      j["quantized"]["layers_fp32"] = q.report.skipped.size();
    }
    j["quantized"]["fallback_fp32"] = q.fallback;
    if (q.comparison) {
      const auto& c = *q.comparison;
      j["quantized"]["vs_fp32"] = {{"max_abs_diff", c.max_abs_diff},
                                   {"mean_cosine", c.mean_cosine},
                                   {"min_cosine", c.min_cosine},
                                   {"label_agreement", c.label_agreement >= 0 ? json(c.label_agreement) : json()},
                                   {"fp32_ms", c.reference_ms},
                                   {"int8_ms", c.candidate_ms}};
    }
  }
  trex::cli::write_text_file(path, j.dump(2) + "\n", "the report");
}

// Options of `trex export` that only mean something for ONNX output. (--opset applies to both: TorchScript is
// lowered from the plain ONNX graph of that opset.)
constexpr const char* kOnnxOnlyOptions[] = {"--report",   "--external-data", "--no-check",    "--optimize",
                                            "--quantize", "--static-shape",  "--gelu-approximation",
                                            "--allow-nonfinite", "--layout", "--triton-name", "--triton-max-batch",
                                            "--latency-shape", "--latency-repeats", "--latency-threads"};

// Every file `trex export` may write, for the never-overwrite-an-input check.
std::vector<fs::path> export_outputs(const ExportArgs& a, bool torchscript, const trex::ExportOptions& o) {
  const fs::path out = torchscript ? fs::path(a.output) : trex::resolve_output_file(o);
  std::vector<fs::path> files{out};
  if (torchscript) return files;
  files.push_back(trex::external_data_path(out));
  auto add_variant = [&](trex::Variant v) {
    const fs::path f = trex::layout_variant_file(out, o.layout, v);
    files.push_back(f);
    files.push_back(trex::external_data_path(f));
  };
  if (a.optimize) add_variant(trex::Variant::kOptimized);
  if (!a.quantize_mode.empty()) {
    add_variant(trex::quantized_variant(a.quantize_mode == "int4" ? 4 : 8));
    files.push_back(out.parent_path() / "weights-quantized.data");
  }
  if (!a.report.empty()) files.emplace_back(a.report);
  return files;
}

void remove_written(const trex::WriteResult& w) {
  std::error_code ec;
  if (!w.model_path.empty()) fs::remove(w.model_path, ec);
  if (!w.data_path.empty()) fs::remove(w.data_path, ec);
}

int run_export(const ExportArgs& a, const CLI::App& cmd) {
  const bool torchscript = trex::cli::output_format(a.format, a.output) == "torchscript";
  if (torchscript) {
    for (const char* name : kOnnxOnlyOptions)
      if (cmd.count(name))
        throw trex::UsageError(std::string(name) + " does not apply to TorchScript output (" + a.output + ")");
  } else if (a.eager_attention) {
    throw trex::UsageError("--eager-attention applies to TorchScript output (.pt, --format torchscript) only");
  }
  if (a.dtype == "bf16")
    throw trex::UsageError("--dtype bf16: ONNX Runtime's CPU provider has no bfloat16 kernels for MatMul, Add, Mul, "
                           "Softmax, LayerNormalization, ... (checked with onnxruntime 1.23), so the model could not "
                           "run or be checked; use --dtype fp16");
  if (a.dtype == "fp16") {
    if (torchscript) throw trex::UsageError("--dtype fp16 applies to ONNX output only");
    if (a.optimize || !a.quantize_mode.empty())
      throw trex::UsageError("--dtype fp16 writes the plain graph only: not with --optimize or --quantize");
  }
  for (const char* name : {"--latency-shape", "--latency-repeats", "--latency-threads"})
    if (cmd.count(name) && a.report.empty()) throw trex::UsageError(std::string(name) + " applies with --report only");
  trex::ExportOptions o;
  if (!torchscript) {
    const auto layout = trex::parse_layout(a.layout);
    if (!layout) throw trex::UsageError("--layout must be trex, optimum, transformers.js or triton, got '" + a.layout + "'");
    o.layout = *layout;
    if (o.layout != trex::Layout::kTriton && (cmd.count("--triton-name") || cmd.count("--triton-max-batch")))
      throw trex::UsageError("--triton-name and --triton-max-batch apply to --layout triton only");
    o.triton_name = a.triton_name.empty() ? trex::triton_name_from(a.model) : a.triton_name;
    o.triton_max_batch = a.triton_max_batch;
  }
  if (!trex::parse_framework(a.framework, &o.framework))
    throw trex::UsageError("--framework must be pt, tf or auto, got '" + a.framework + "'");
  const bool tty_progress = ::isatty(STDERR_FILENO) && !a.quiet;
  o.model_dir = trex::resolve_model_dir(a.model, a.revision, [tty_progress, last = std::string()](
                                                                 const std::string& file, uint64_t done,
                                                                 uint64_t total) mutable {
    if (!tty_progress) return;
    char line[160];
    std::snprintf(line, sizeof line, "\rdownloading %s: %s of %s   ", file.c_str(), mib(done).c_str(),
                  total ? mib(total).c_str() : "?");
    if (file != last && !last.empty()) std::cerr << "\n";
    last = file;
    std::cerr << line << std::flush;
  }, o.framework);
  o.output = a.output;
  trex::check_outputs_not_inputs(export_outputs(a, torchscript, o), trex::checkpoint_input_files(o.model_dir));

  o.pipeline = a.pipeline;
  o.opset = a.opset;
  o.check = !a.no_check;
  o.allow_nonfinite = a.allow_nonfinite;
  o.optimize = a.optimize;
  o.quantize = !a.quantize_mode.empty();
  if (!o.quantize) {
    for (const char* name : {"--block-size", "--symmetric", "--asymmetric", "--accuracy-level",
                             "--no-quantize-embeddings", "--quantized-only", "--int8-accurate"})
      if (cmd.count(name)) throw trex::UsageError(std::string(name) + " applies with --quantize only");
  } else {
    o.quantize_bits = a.quantize_mode == "int4" ? 4 : 8;
    if (o.quantize_bits == 8)
      for (const char* name : {"--block-size", "--symmetric", "--asymmetric", "--accuracy-level"})
        if (cmd.count(name)) throw trex::UsageError(std::string(name) + " applies to --quantize int4 only");
  }
  if (cmd.count("--int8-accurate") && o.quantize_bits != 8)
    throw trex::UsageError("--int8-accurate applies to --quantize int8 only");
  o.int8_accurate = a.int8_accurate;
  if (cmd.count("--int4-search") && (o.quantize_bits != 4 || !o.quantize))
    throw trex::UsageError("--int4-search applies to --quantize int4 only");
  o.int4_clip_stride = a.int4_search == "full" ? 1 : a.int4_search == "rtn" ? 0 : 4;
  o.int4_block_size = a.block_size;
  o.int4_symmetric = a.symmetric;
  o.int4_accuracy_level = a.accuracy_level;
  o.quantize_embeddings = !a.no_embeddings;
  o.quantized_only = a.quantized_only;
  o.fp16 = a.dtype == "fp16";
  o.gelu_approximation = a.gelu_approximation;
  if (a.gelu_approximation && !a.optimize) throw trex::UsageError("--gelu-approximation only applies with --optimize");
  if (a.gelu_approximation) o.optimize_atol = 1e-2;  // the tanh approximation moves outputs by ~1e-3
  if (a.external == "auto") o.external = trex::ExternalData::kAuto;
  else if (a.external == "always") o.external = trex::ExternalData::kAlways;
  else if (a.external == "never") o.external = trex::ExternalData::kNever;
  else throw trex::UsageError("--external-data must be auto, always or never, got '" + a.external + "'");
  if (!a.static_shape.empty()) o.static_shape = trex::cli::parse_static_shape(a.static_shape);
  trex::OutputFolders folders;
  // Other layouts than trex: OUTPUT itself; the export creates the subfolders it writes into.
  folders.create_parents_of(torchscript                         ? fs::path(a.output)
                            : o.layout == trex::Layout::kTrex ? trex::resolve_output_file(o)
                                                              : fs::path(a.output) / "config.json");
  if (!a.report.empty()) {
    folders.create_parents_of(a.report);
    trex::check_output_path(a.report);
  }
  const bool tty = ::isatty(STDERR_FILENO) && !a.quiet;
  if (!a.quiet) o.log = [](const std::string& s) { std::cout << s << "\n" << std::flush; };
  if (tty) {
    // One refreshed line: percent, bytes and throughput (long exports of multi-GB checkpoints).
    o.progress = [last = -1, start = std::chrono::steady_clock::now()](size_t done, size_t total) mutable {
      int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
      if (pct == last) return;
      last = pct;
      const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      char line[128];
      std::snprintf(line, sizeof line, "\rwriting weights %3d%% (%s of %s, %.0f MB/s)   ", pct, mib(done).c_str(),
                    mib(total).c_str(), secs > 0 ? static_cast<double>(done) / 1e6 / secs : 0.0);
      std::cerr << line << (pct >= 100 ? "\r                                                            \r" : "")
                << std::flush;
    };
  }
  auto t0 = std::chrono::steady_clock::now();
  if (torchscript) {
    trex::TorchScriptOptions ts;
    ts.fused_attention = !a.eager_attention;
    auto r = trex::export_torchscript_checkpoint(o, ts);
    folders.keep();
    if (!a.quiet)
      std::printf("wrote %s (TorchScript, %s %s, %zu parameters; load with torch.jit.load / torch::jit::load)\n"
                  "done in %.2f s\n",
                  o.output.c_str(), r.model_type.c_str(), trex::task_name(r.task).c_str(), r.num_parameters,
                  std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
    return 0;
  }
  o.write_companions = trex::resolve_output_file(o) != o.output;  // OUTPUT names a folder
  trex::ExportResult r = trex::export_onnx(o);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  std::vector<VariantLatency> latency;
  if (!a.report.empty()) {
    try {
      if (a.latency_repeats > 0) latency = measure_variants(r, o, a);
      write_export_report(a.report, r, o.quantize_bits, secs, latency);
    } catch (const trex::Error&) {  // no half-finished run: the models go with the report
      for (const auto& gr : r.graphs) {
        remove_written(gr.written);
        if (gr.optimized) remove_written(*gr.optimized);
      }
      if (r.quantized) remove_written(r.quantized->written);
      std::error_code ec;
      for (const auto& f : r.companions) fs::remove(f, ec);
      for (const auto& f : r.triton_configs) fs::remove(f, ec);
      for (const auto& f : r.triton_configs) {  // the model folders the layout created, when left empty
        fs::remove(f.parent_path() / "1", ec);
        fs::remove(f.parent_path(), ec);
      }
      throw;
    }
  }
  folders.keep();
  if (!a.quiet) {
    if (!r.unused_tensors.empty()) {
      std::string list;
      for (size_t i = 0; i < r.unused_tensors.size() && i < 8; ++i) list += (i ? ", " : "") + r.unused_tensors[i];
      if (r.unused_tensors.size() > 8) list += ", ...";
      std::cout << "note: " << r.unused_tensors.size() << " checkpoint tensor(s) not used by the "
                << trex::task_name(r.task) << " head: " << list << "\n";
    }
    for (const auto& gr : r.graphs) {
      std::cout << "wrote " << gr.written.model_path.string() << " (" << mib(gr.written.model_bytes) << ")";
      if (!gr.written.data_path.empty())
        std::cout << " + external data " << gr.written.data_path.string() << " (" << mib(gr.written.data_bytes) << ")";
      std::cout << "\n";
    }
    if (!r.companions.empty()) {
      std::string list;
      for (const auto& c : r.companions) list += (list.empty() ? "" : ", ") + c.lexically_relative(r.companions.front().parent_path()).string();
      std::cout << "wrote beside it: " << list << "\n";
    }
    for (const auto& c : r.triton_configs) std::cout << "wrote " << c.string() << " (Triton model configuration)\n";
    for (const auto& gr : r.graphs) {
      const std::string which = r.graphs.size() > 1 ? " " + gr.name : "";
      if (gr.check)
        std::cout << "load check" << which << ": ok in " << seconds(gr.check->total_ms) << " (ONNX Runtime ran batch "
                  << o.static_shape.value_or(std::make_pair(2L, 8L)).first << ": " << gr.check->summary() << ")\n";
      else
        std::cout << "load check" << which << ": skipped (--no-check)\n";
      if (gr.quantized) {
        std::cout << "wrote " << gr.quantized->model_path.string() << " ("
                  << mib(gr.quantized->model_bytes + gr.quantized->data_bytes) << ", "
                  << (o.quantize_bits == 4 ? "int4 MatMulNBits" : "int8") << ": " << gr.quantized_layers
                  << " weights quantized, " << gr.kept_layers << " kept float, " << gr.quantized_tables
                  << " embedding table(s) quantized)\n";
        if (gr.quantized_check)
          std::cout << "load check" << which << " quantized: ok in " << seconds(gr.quantized_check->total_ms) << " ("
                    << gr.quantized_check->summary() << ")\n";
      }
      if (gr.optimized) {
        std::cout << "wrote " << gr.optimized->model_path.string() << " (" << mib(gr.optimized->model_bytes) << ")\n";
        std::cout << "optimized vs plain" << which << " (ONNX Runtime, same random inputs):\n"
                  << gr.optimized_verify->table();
      }
    }
    if (r.quantized) {
      const auto& q = *r.quantized;
      std::printf("wrote %s (%s, %s weights: %zu MatMul/Gemm/Attention quantized, %zu kept fp32%s)\n",
                  q.written.model_path.string().c_str(), mib(q.written.model_bytes + q.written.data_bytes).c_str(),
                  o.quantize_bits == 4 ? "int4" : "int8",
                  q.report.quantized.size(), q.report.skipped.size(),
                  q.fallback.empty() ? "" : (", " + std::to_string(q.fallback.size()) + " by the accuracy check").c_str());
      if (q.comparison)
        std::printf("%s vs fp32: max abs diff %.3e, mean cosine %.5f (min %.5f)%s\n",
                    o.quantize_bits == 4 ? "int4" : "int8", q.comparison->max_abs_diff, q.comparison->mean_cosine,
                    q.comparison->min_cosine,
                    q.comparison->label_agreement >= 0
                        ? (", label agreement " + std::to_string(100 * q.comparison->label_agreement) + " %").c_str()
                        : "");
    }
    if (!latency.empty()) std::cout << latency_table(latency);
    std::printf("done in %.2f s\n", secs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trex " TREX_VERSION
               ": export Hugging Face transformer checkpoints to ONNX, natively.\n"
               "Exit codes: 0 ok, 1 usage error, 2 input error (checkpoint), 3 verification failed, 4 output error, "
               "5 internal error (a bug)."};
  app.set_version_flag("--version", std::string("trex ") + TREX_VERSION);
  app.require_subcommand(1);

  ExportArgs ea;
  auto* ex = app.add_subcommand("export", "Export a checkpoint (folder or hub id) to ONNX: encoders, decoder-only LMs, "
                                          "encoder-decoders");
  ex->add_option("--model,-m", ea.model, "Checkpoint folder (config.json + model.safetensors / pytorch_model.bin, "
                                         "sharded or not, or tf_model.h5), a Hugging Face cache folder "
                                         "(models--ORG--NAME), or a "
                                         "hub id ORG/NAME: taken from the local Hugging Face cache (HF_HUB_CACHE, "
                                         "HF_HOME/hub, ~/.cache/huggingface/hub), else downloaded from HF_ENDPOINT "
                                         "(HF_TOKEN; none with HF_HUB_OFFLINE=1)")->required();
  ex->add_option("--framework", ea.framework,
                 "Weights to read: pt (model.safetensors / pytorch_model.bin, sharded or not), tf (tf_model.h5, "
                 "transformers' TensorFlow checkpoint) or auto (default: PyTorch's when present, else tf_model.h5)")
      ->check(CLI::IsMember({"auto", "pt", "tf", "pytorch", "tensorflow"}));
  ex->add_option("--revision", ea.revision, "Branch, tag or commit of a hub id / cache folder (default main)");
  ex->add_option("--pipeline,-p,--task", ea.pipeline,
                 "Head to export (--task: optimum's name for it): feature-extraction, text-classification "
                 "(= sentiment-analysis), token-classification (= ner), question-answering, fill-mask, "
                 "text-generation (= causal-lm; decoders: logits + KV cache). Default: the head named by "
                 "config.json's architectures, else the architecture's first (feature-extraction for encoders)");
  ex->add_option("--opset", ea.opset, "ONNX opset, 11-21 (default 17: first opset with LayerNormalization)")
      ->check(trex::cli::integer_in(trex::kMinOpset, trex::kMaxOpset));
  ex->add_option("--static-shape", ea.static_shape,
                 "Fix the input shape to BATCH,SEQUENCE instead of dynamic axes (at most 1048576 tokens)");
  ex->add_option("--external-data", ea.external,
                 "auto (weights in OUTPUT.onnx.data when the model passes 2 GB), always, never");
  ex->add_option("--dtype", ea.dtype,
                 "fp32 (default) or fp16: float16 weights and compute (norms, softmax, rotary angles kept float32; "
                 "float inputs and outputs stay float32), standard ONNX; bf16 is refused (no ONNX Runtime CPU "
                 "kernels)")
      ->check(CLI::IsMember({"fp32", "fp16", "bf16"}));
  ex->add_flag("--no-check", ea.no_check, "Skip the ONNX Runtime load check after writing");
  ex->add_flag("--allow-nonfinite", ea.allow_nonfinite,
               "Write weights holding NaN or infinity (refused by default, naming the tensor)");
  ex->add_option("--report", ea.report,
                 "Write a JSON report: files and sizes, load check, optimized-vs-plain and int8-vs-fp32 comparisons, "
                 "each variant's ONNX Runtime latency (median of repeats with its spread, also printed as a table), "
                 "timings");
  ex->add_option("--latency-shape", ea.latency_shape,
                 "--report: BATCH,SEQUENCE each variant's latency is measured at (default 1,128, the sequence "
                 "capped by the model's position table; the static shape with --static-shape)");
  ex->add_option("--latency-repeats", ea.latency_repeats,
                 "--report: timed runs per variant, after 2 warm-up runs (default 10; 0: no latency)")
      ->check(trex::cli::integer_in(0, 100000));
  ex->add_option("--latency-threads", ea.latency_threads, "--report: ONNX Runtime intra-op threads (default 1)")
      ->check(trex::cli::integer_in(1, 1024));
  ex->add_flag("--quiet,-q", ea.quiet, "Print nothing but errors");
  ex->add_flag("--optimize", ea.optimize,
               "Also write <stem>-optimized.onnx using ONNX Runtime's fused ops (EmbedLayerNormalization, Attention, "
               "SkipLayerNormalization, BiasGelu/FastGelu), checked against the plain model (atol 1e-4)");
  ex->add_flag("--gelu-approximation", ea.gelu_approximation,
               "With --optimize: replace exact GELU by FastGelu's tanh approximation. Faster, but CHANGES RESULTS "
               "(typically ~1e-3); checked with atol 1e-2");
  ex->add_flag("--quantize{int8}", ea.quantize_mode,
               "--quantize [int8|int4] (plain --quantize: int8). Also write <stem>-quantized.onnx (graph sets: "
               "<name>-quantized.onnx each, sharing weights-quantized.data), from the optimized model with "
               "--optimize, else from the plain one. int8: dynamic (per-channel s8, MatMulIntegerToFloat); int4: "
               "com.microsoft.MatMulNBits. Embedding tables (tied LM heads' too) become 8-bit GatherBlockQuantized. "
               "Encoders: compared with fp32, sensitive layers fall back to fp32, int4 calibrated + GPTQ. Decoders "
               "and encoder-decoders: quantized tensor by tensor from the checkpoint while written (int4: per-block "
               "clipping search), load-checked; genai_config.json names the quantized model")
      ->check(CLI::IsMember({"int8", "int4"}));
  ex->add_option("--block-size", ea.block_size, "--quantize int4: weights per scale along K (16..256, power of 2; default 32)");
  auto* esym = ex->add_flag("--symmetric", ea.symmetric, "--quantize int4: no zero points (codes around 8)");
  ex->add_flag("--asymmetric", ea.asymmetric, "--quantize int4: a 4-bit zero point per block (default)")->excludes(esym);
  ex->add_option("--accuracy-level", ea.accuracy_level,
                 "--quantize int4: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations)")
      ->check(CLI::Range(0, 4));
  ex->add_option("--int4-search", ea.int4_search,
                 "--quantize int4, decoders and encoder-decoders: per-block clipping search over 21 ratios 1.0..0.7 "
                 "(full), every 4th of them (coarse, default: several times faster), or none (rtn: "
                 "round-to-nearest)")
      ->check(CLI::IsMember({"full", "coarse", "rtn"}));
  ex->add_flag("--int8-accurate", ea.int8_accurate,
               "--quantize int8, encoders: up to 2 outlier input channels per activation (found by calibration) "
               "multiplied in fp32 and one activation scale per row for LayerNorm outputs (trex quantize "
               "--outlier-channels 2 --row-scales normalized): all-MiniLM-L6-v2's worst sentence 0.963 -> 0.996 "
               "cosine vs fp32, about 13 % slower than the default per-tensor form; made from the plain graph");
  ex->add_flag("--no-quantize-embeddings", ea.no_embeddings,
               "--quantize: keep embedding tables (and tied LM heads' tables) float");
  ex->add_flag("--quantized-only", ea.quantized_only,
               "--quantize, decoders and encoder-decoders: write only the quantized graphs (the fp32 model is never "
               "written: streamed from the checkpoint into the quantized file)");
  ex->add_option("--format", ea.format,
                 "onnx or torchscript: a scripted LibTorch module (.pt) with transformers' parameter names, any "
                 "sequence length, loadable by torch.jit.load / torch::jit::load. Default: from the output's "
                 "extension (.pt: torchscript, else onnx); a contradicting extension is an error")
      ->check(CLI::IsMember({"onnx", "torchscript"}));
  ex->add_flag("--eager-attention", ea.eager_attention,
               "TorchScript: keep transformers' eager attention ops (bit-identical to attn_implementation=eager) "
               "instead of one scaled_dot_product_attention call (faster, ~1e-6 relative)");
  ex->add_option("--layout", ea.layout,
                 "File names and places for a runtime to load OUTPUT as it is: trex (default: model.onnx, "
                 "model-optimized.onnx, model-quantized.onnx; sets as encoder_model.onnx + decoder_model_merged.onnx "
                 "sharing weights.data), optimum (model.onnx, model_optimized.onnx, model_quantized.onnx, per graph "
                 "for sets), transformers.js (config and tokenizer at the root, onnx/model.onnx, "
                 "onnx/model_quantized.onnx (int8), self-contained graphs), triton (a model repository: "
                 "OUTPUT/NAME/config.pbtxt + OUTPUT/NAME/1/model.onnx; each graph of a set and each variant its own "
                 "model: NAME_encoder_model, NAME_optimized, ...). Other layouts than trex need OUTPUT to be a folder")
      ->check(CLI::IsMember({"trex", "optimum", "transformers.js", "triton"}));
  ex->add_option("--triton-name", ea.triton_name,
                 "--layout triton: the model's name (default: the checkpoint folder's or hub id's last component)");
  ex->add_option("--triton-max-batch", ea.triton_max_batch,
                 "--layout triton: max_batch_size with dynamic batching when every tensor's first dim is the batch "
                 "(default 16; 0: no batching)")
      ->check(trex::cli::integer_in(0, 1 << 20));
  ex->add_option("output", ea.output,
                 "Output: a .onnx path, a folder (gets model.onnx plus config.json, the tokenizer files and, for "
                 "decoders, generation_config.json and genai_config.json), or .pt for TorchScript; missing folders "
                 "are created")->required();

  std::string opt_in, opt_out, opt_level = "all";
  auto* op = app.add_subcommand("optimize", "ONNX Runtime's offline graph optimization of any ONNX file");
  op->add_option("input", opt_in, "Input .onnx")->required();
  op->add_option("output", opt_out, "Output .onnx (missing folders are created; never the input)")->required();
  op->add_option("--level", opt_level, "basic, extended or all (default; may add CPU-specific layouts)")
      ->check(CLI::IsMember({"basic", "extended", "all"}));

  std::string ver_a, ver_b, ver_outputs;
  trex::VerifyOptions vo;
  std::string ver_report;
  auto* ve = app.add_subcommand("verify", "Run two ONNX models on the same random inputs and compare outputs");
  ve->add_option("model", ver_a, "ONNX model to check")->required();
  ve->add_option("--against", ver_b, "Reference ONNX model")->required();
  ve->add_option("--atol", vo.atol, "Max abs diff allowed per output (default 1e-4); exit 3 when exceeded")
      ->check(trex::cli::real_in(0, 1e30));
  ve->add_option("--min-cosine", vo.min_cosine,
                 "Also pass an output whose mean row cosine vs the reference is at least this (-1 to 1), even when "
                 "its max abs diff is above --atol (e.g. int8 vs fp32: --min-cosine 0.99)")
      ->check(trex::cli::real_in(-1, 1));
  ve->add_option("--outputs", ver_outputs,
                 "Comma-separated outputs to compare (default: the outputs both models have, e.g. trex vs optimum "
                 "with an extra pooler_output)");
  ve->add_option("--batch", vo.batch, "Batch size for symbolic batch dims (default 2)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  ve->add_option("--seq", vo.seq, "Length for other symbolic dims (default 16)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  int64_t vocab = 0;
  ve->add_option("--vocab", vocab, "Random input_ids are drawn from [0, VOCAB) (default: the size of the table "
                                   "input_ids index in the model, else 100)")
      ->check(trex::cli::integer_in(1, int64_t{1} << 31));
  ve->add_option("--report", ver_report, "Also write the comparison as JSON to this file");

  std::function<int()> quantize_action;
  auto* qu = add_quantize_command(app, &quantize_action);
  add_tokenize_command(app);
  add_run_command(app);
  std::function<int()> bench_action;
  auto* be = add_bench_command(app, &bench_action);

  // `--quantize int4` as well as `--quantize=int4`: the flag's value is only taken when it is one of the modes,
  // so `--quantize OUTPUT` keeps meaning int8 with OUTPUT positional.
  std::vector<std::string> merged;
  for (int i = 0; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--quantize" && i + 1 < argc && (std::string(argv[i + 1]) == "int8" || std::string(argv[i + 1]) == "int4")) {
      merged.push_back(arg + "=" + argv[++i]);
    } else {
      merged.push_back(arg);
    }
  }
  std::vector<char*> merged_argv;
  for (auto& m : merged) merged_argv.push_back(m.data());
  try {
    app.parse(static_cast<int>(merged_argv.size()), merged_argv.data());
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    return fail(ExitCode::kUsage, std::string(e.what()) + " (see trex --help)");
  }

  try {
    if (ex->parsed()) return run_export(ea, *ex);
    if (op->parsed()) {
      const trex::OrtOptLevel level = opt_level == "basic"      ? trex::OrtOptLevel::kBasic
                                      : opt_level == "extended" ? trex::OrtOptLevel::kExtended
                                                                : trex::OrtOptLevel::kAll;
      trex::check_outputs_not_inputs({opt_out, trex::external_data_path(opt_out)}, trex::cli::onnx_model_files(opt_in));
      trex::OutputFolders folders;
      folders.create_parents_of(opt_out);
      auto r = trex::ort_optimize(opt_in, opt_out, level);
      folders.keep();
      std::cout << "wrote " << opt_out << (r.data_path.empty() ? "" : " + " + r.data_path.string()) << "\n";
      return 0;
    }
    if (ve->parsed()) {
      trex::cli::check_sample_tokens(vo.batch, vo.seq, "--batch x --seq");
      if (vocab > 0) vo.input_limits["input_ids"] = vocab;
      vo.outputs = trex::cli::split_list(ver_outputs);
      if (!ver_outputs.empty() && vo.outputs.empty()) throw trex::UsageError("--outputs wants NAME[,NAME...]");
      std::vector<fs::path> inputs = trex::cli::onnx_model_files(ver_a);
      for (auto& f : trex::cli::onnx_model_files(ver_b)) inputs.push_back(f);
      trex::OutputFolders folders;
      if (!ver_report.empty()) {
        trex::check_outputs_not_inputs({ver_report}, inputs);
        folders.create_parents_of(ver_report);
        trex::check_output_path(ver_report);
      }
      auto report = trex::verify_models(ver_a, ver_b, vo);
      std::cout << report.table();
      if (!ver_report.empty()) trex::cli::write_text_file(ver_report, report.json() + "\n", "the report");
      folders.keep();
      if (!report.ok())
        return fail(ExitCode::kVerification,
                    ver_a + ": outputs differ from " + ver_b + " beyond atol " + trex::cli::number(vo.atol) +
                        (vo.min_cosine ? " and below mean cosine " + trex::cli::number(*vo.min_cosine) : std::string()));
      return 0;
    }
    if (qu->parsed() && quantize_action) return quantize_action();
    if (be->parsed() && bench_action) return bench_action();
  } catch (const trex::Error& e) {
    return fail(e.code(), e.what());
  } catch (const std::exception& e) {
    return fail(ExitCode::kInternal, std::string("internal error: ") + e.what());
  }
  return 0;
}
