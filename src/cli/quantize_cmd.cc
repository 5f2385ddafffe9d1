// `trex quantize IN.onnx OUT.onnx`: dynamic int8 quantization of any ONNX model's MatMul/Gemm weights,
// then an fp32-vs-int8 comparison in ONNX Runtime (with an automatic fp32 fallback for the most sensitive
// layers when the comparison misses its target).
#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <functional>
#include <iostream>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>

#include "cli/common.h"
#include "cli/format.h"
#include "cli/numbers.h"
#include "onnx/writer.h"
#include "passes/quantize_file.h"
#include "util/error.h"
#include "util/output_path.h"

namespace {

struct QuantizeArgs {
  std::string input, output, weight_type = "s8", ops = "microsoft", external = "auto", report;
  bool per_tensor = false, reduce_range = false, no_auto = false, no_check = false, no_fallback = false, quiet = false,
       allow_nonfinite = false;
  std::vector<std::string> exclude, exclude_op_types;
  int64_t min_elements = 1024;
  double min_cosine = -1, min_label_agreement = 0.95;  // min_cosine < 0: 0.99 for int8, 0.95 for int4
  int samples = 4, fallback_rounds = 3;
  int64_t batch = 2, seq = 16;
  int bits = 8;                            // 4: MatMulNBits (src/passes/quantize_int4.h)
  int64_t block_size = 32, accuracy_level = 0;
  bool asymmetric = false, symmetric = false, rtn = false, no_embeddings = false, no_calibration = false, no_gptq = false;
  int embedding_bits = 8;
  int64_t embedding_block = 128;
  int outlier_channels = 0;
  std::string row_scales = "none";
};

using trex::cli::mib;


int run_quantize(const QuantizeArgs& a) {
  trex::cli::check_sample_tokens(a.batch, a.seq, "--batch x --seq");
  std::vector<std::filesystem::path> outputs{a.output, trex::external_data_path(a.output)};
  if (!a.report.empty()) outputs.emplace_back(a.report);
  trex::check_outputs_not_inputs(outputs, trex::cli::onnx_model_files(a.input));
  trex::OutputFolders folders;
  folders.create_parents_of(a.output);
  if (!a.report.empty()) {
    folders.create_parents_of(a.report);
    trex::check_output_path(a.report);
  }
  trex::QuantizeFileOptions o;
  trex::QuantizePolicy& policy = o.policy;
  policy.params.type = a.weight_type == "s8" ? trex::WeightType::kS8 : trex::WeightType::kU8;
  policy.params.per_channel = !a.per_tensor;
  policy.params.reduce_range = a.reduce_range;
  policy.ops = a.ops == "microsoft" ? trex::QuantOps::kMicrosoft : trex::QuantOps::kStandard;
  policy.exclude_nodes = a.exclude;
  policy.exclude_op_types = a.exclude_op_types;
  policy.auto_policy = !a.no_auto;
  policy.min_elements = a.min_elements;
  o.write.external = a.external == "always" ? trex::ExternalData::kAlways
                     : a.external == "never" ? trex::ExternalData::kNever
                                             : trex::ExternalData::kAuto;
  o.write.allow_nonfinite = a.allow_nonfinite;
  o.check = !a.no_check;
  o.fallback = !a.no_fallback;
  o.fallback_rounds = a.fallback_rounds;
  o.min_cosine = a.min_cosine >= 0 ? a.min_cosine : a.bits == 4 ? 0.95 : 0.99;
  o.min_label_agreement = a.min_label_agreement;
  o.samples = a.samples;
  o.batch = a.batch;
  o.seq = a.seq;
  o.bits = a.bits;
  o.int4.params.block_size = a.block_size;
  o.int4.params.symmetric = a.symmetric;  // asymmetric by default: measurably better with GPTQ (docs/quantization.md)
  o.int4.params.search = !a.rtn;
  o.int4.accuracy_level = a.accuracy_level;
  if (a.bits == 4) trex::check_int4_params(o.int4.params);
  o.calibrate = !a.no_calibration;
  o.gptq = !a.no_gptq;
  o.outlier_channels = a.outlier_channels;
  o.row_scales = a.row_scales == "all" ? trex::RowScales::kAll
                 : a.row_scales == "none" ? trex::RowScales::kNone
                                          : trex::RowScales::kNormalized;
  o.embeddings = !a.no_embeddings;
  o.embedding.bits = a.embedding_bits;
  o.embedding.block_size = a.embedding_block;
  trex::QuantizeFileResult res = trex::quantize_file(a.input, a.output, o);
  const trex::QuantizeReport& rep = res.report;
  const trex::WriteResult& written = res.written;
  const std::optional<trex::CompareResult>& cmp = res.comparison;
  const std::vector<std::string>& fallback = res.fallback;
  const bool missed = res.missed_target;
  const double quantize_s = res.seconds;
  policy = res.policy;

  if (!a.quiet) {
    std::printf("%-28s %s\n", "input", a.input.c_str());
    std::printf("%-28s %s%s\n", "output", a.output.c_str(),
                written.data_path.empty() ? "" : (" + " + written.data_path.filename().string()).c_str());
    std::printf("%-28s %s -> %s (%.2fx smaller)\n", "weights", mib(rep.weight_bytes_before).c_str(),
                mib(rep.weight_bytes_after).c_str(),
                rep.weight_bytes_after ? static_cast<double>(rep.weight_bytes_before) / static_cast<double>(rep.weight_bytes_after) : 0.0);
    std::printf("%-28s %zu quantized, %zu kept fp32\n", "MatMul/Gemm nodes", rep.quantized.size(), rep.skipped.size());
    if (a.bits == 4)
      std::printf("%-28s int4 MatMulNBits, block %lld, %s, %s, accuracy_level %lld\n", "mode",
                  static_cast<long long>(a.block_size), a.symmetric ? "symmetric" : "asymmetric",
                  a.rtn ? "round-to-nearest" : a.no_calibration ? "clipping search" : a.no_gptq ? "calibrated clipping search" : "GPTQ + calibrated clipping search", static_cast<long long>(a.accuracy_level));
    else
  {
    std::printf("%-28s %s, %s, %s%s\n", "mode", policy.params.type == trex::WeightType::kS8 ? "s8" : "u8",
                policy.params.per_channel ? "per-channel" : "per-tensor",
                policy.ops == trex::QuantOps::kMicrosoft ? "MatMulIntegerToFloat" : "MatMulInteger",
                policy.params.reduce_range ? ", reduce-range" : "");
    size_t with_outliers = 0, row_scaled = 0;
    for (const auto& l : rep.quantized) {
      with_outliers += l.outlier_channels > 0;
      row_scaled += l.row_scaled;
    }
    std::printf("%-28s %zu read fp32 outlier channels, %zu per-row activation scales\n", "int8 MatMuls", with_outliers,
                row_scaled);
  }
    if (!res.embeddings.quantized.empty())
      std::printf("%-28s %zu table(s) as GatherBlockQuantized, %d-bit, block %lld\n", "embeddings",
                  res.embeddings.quantized.size(), a.embedding_bits, static_cast<long long>(a.embedding_block));
    std::printf("%-28s %.3f s\n", "quantize time", quantize_s);
    if (!fallback.empty()) std::printf("%-28s %zu weight(s) back to fp32 by the accuracy check\n", "fallback", fallback.size());
    if (cmp) {
      std::printf("%-28s %.3e\n", "max abs diff vs fp32", cmp->max_abs_diff);
      std::printf("%-28s %.5f (min row %.5f)\n", "cosine vs fp32", cmp->mean_cosine, cmp->min_cosine);
      if (cmp->label_agreement >= 0) std::printf("%-28s %.2f %%\n", "label agreement", 100.0 * cmp->label_agreement);
      std::printf("%-28s %.2f ms fp32, %.2f ms quantized (batch %lld x %lld)\n", "sample run time", cmp->reference_ms,
                  cmp->candidate_ms, static_cast<long long>(a.batch), static_cast<long long>(a.seq));
    } else {
      std::printf("%-28s skipped (--no-check)\n", "comparison");
    }
  }

  if (!a.report.empty()) {
    nlohmann::json j;
    j["input"] = a.input;
    j["output"] = a.output;
    j["mode"] = {{"weight_type", a.weight_type},
                 {"per_channel", policy.params.per_channel},
                 {"reduce_range", policy.params.reduce_range},
                 {"ops", a.ops},
                 {"bits", a.bits},
                 {"outlier_channels", a.outlier_channels},
                 {"row_scales", a.row_scales}};
    if (a.bits == 4)
      j["mode"]["int4"] = {{"block_size", a.block_size}, {"symmetric", a.symmetric}, {"search", !a.rtn}, {"calibrated", !a.rtn && !a.no_calibration}, {"gptq", !a.rtn && !a.no_calibration && !a.no_gptq},
                           {"accuracy_level", a.accuracy_level}};
    j["weight_bytes_before"] = rep.weight_bytes_before;
    j["weight_bytes_after"] = rep.weight_bytes_after;
    j["model_bytes"] = written.model_bytes;
    j["data_bytes"] = written.data_bytes;
    j["quantize_seconds"] = quantize_s;
    j["quantized"] = nlohmann::json::array();
    for (const auto& l : rep.quantized)
      j["quantized"].push_back({{"node", l.node}, {"op_type", l.op_type}, {"weight", l.weight}, {"k", l.k}, {"n", l.n},
                                {"bias_fused", l.bias_fused}, {"outlier_channels", l.outlier_channels},
                                {"row_scaled", l.row_scaled}});
    j["skipped"] = nlohmann::json::array();
    for (const auto& s : rep.skipped)
      j["skipped"].push_back({{"node", s.node}, {"op_type", s.op_type}, {"weight", s.weight}, {"reason", s.reason}});
    j["fallback_fp32"] = fallback;
    j["embeddings"] = nlohmann::json::array();
    for (const auto& e : res.embeddings.quantized)
      j["embeddings"].push_back({{"table", e.table}, {"rows", e.rows}, {"cols", e.cols}, {"bits", a.embedding_bits},
                                 {"block_size", e.block_size}});
    if (cmp) {
      nlohmann::json c;
      c["max_abs_diff"] = cmp->max_abs_diff;
      c["mean_cosine"] = cmp->mean_cosine;
      c["min_cosine"] = cmp->min_cosine;
      c["label_agreement"] = cmp->label_agreement >= 0 ? nlohmann::json(cmp->label_agreement) : nlohmann::json();
      c["fp32_ms"] = cmp->reference_ms;
      c["int8_ms"] = cmp->candidate_ms;
      c["outputs"] = nlohmann::json::array();
      for (const auto& o : cmp->outputs)
        c["outputs"].push_back({{"name", o.name},
                                {"max_abs_diff", o.max_abs_diff},
                                {"mean_abs_diff", o.mean_abs_diff},
                                {"mean_cosine", o.mean_cosine},
                                {"min_cosine", o.min_cosine},
                                {"label_agreement", o.label_agreement >= 0 ? nlohmann::json(o.label_agreement) : nlohmann::json()}});
      c["passed"] = !missed;
      j["comparison"] = c;
    }
    try {
      trex::cli::write_text_file(a.report, j.dump(2) + "\n", "the report");
    } catch (const trex::Error&) {  // no half-finished run: the model goes with the report
      std::error_code ec;
      std::filesystem::remove(written.model_path, ec);
      if (!written.data_path.empty()) std::filesystem::remove(written.data_path, ec);
      throw;
    }
  }
  folders.keep();
  if (missed) {
    char buf[160];
    std::snprintf(buf, sizeof buf, "cosine %.5f, label agreement %s (targets %.3f / %.3f)", cmp->mean_cosine,
                  cmp->label_agreement >= 0 ? std::to_string(cmp->label_agreement).c_str() : "n/a", o.min_cosine,
                  a.min_label_agreement);
    throw trex::VerificationError(a.output + (a.bits == 4 ? ": int4" : ": int8") + " model misses its accuracy target vs fp32: " + buf +
                                  " (the model was written; pass --no-check to skip the comparison)");
  }
  return 0;
}

}  // namespace

CLI::App* add_quantize_command(CLI::App& app, std::function<int()>* action) {
  auto args = std::make_shared<QuantizeArgs>();
  auto* q = app.add_subcommand("quantize", "Quantize an ONNX model's weights: dynamic int8 (default) or int4 MatMulNBits (--bits 4)");
  q->add_option("input", args->input, "ONNX model to quantize (any exporter; external data is followed)")->required();
  q->add_option("output", args->output, "Quantized model to write (missing folders are created; never the input)")
      ->required();
  q->add_flag("--per-tensor", args->per_tensor, "One scale per weight tensor (default: one per output channel)");
  q->add_option("--weight-type", args->weight_type, "Stored weight type: s8 (symmetric, default) or u8 (asymmetric)")
      ->check(CLI::IsMember({"s8", "u8"}));
  q->add_flag("--reduce-range", args->reduce_range,
              "7-bit weights (for CPUs without VNNI, whose u8 x s8 kernels can saturate)");
  q->add_option("--ops", args->ops,
                "Emitted ops: microsoft (DynamicQuantizeLinear + com.microsoft.MatMulIntegerToFloat, default) or "
                "standard (DynamicQuantizeLinear + MatMulInteger + Cast + Mul)")
      ->check(CLI::IsMember({"microsoft", "standard"}));
  q->add_option("--bits", args->bits, "Weight bits: 8 (dynamic int8, default) or 4 (com.microsoft.MatMulNBits)")
      ->check(CLI::IsMember({4, 8}));
  q->add_option("--block-size", args->block_size, "--bits 4: weights per scale along K (16..256, power of 2; default 32)");
  auto* sym = q->add_flag("--symmetric", args->symmetric, "--bits 4: codes -8..7 around MatMulNBits' default zero point 8, no zero-point input");
  q->add_flag("--asymmetric", args->asymmetric, "--bits 4: a 4-bit zero point per block (default)")->excludes(sym);
  q->add_flag("--no-calibration", args->no_calibration,
              "--bits 4: search the clipping on the weight error alone (default: weighted by the activations' mean "
              "squares, measured on random sample inputs in ONNX Runtime)");
  q->add_flag("--no-gptq", args->no_gptq,
              "--bits 4: no GPTQ error feedback (default with calibration: each row's rounding error is spread over "
              "the rows not yet quantized, weighted by the inverse activation Gram matrix)");
  q->add_flag("--rtn", args->rtn, "--bits 4: plain round-to-nearest scales (no clipping search; for comparisons)");
  q->add_option("--accuracy-level", args->accuracy_level,
                "--bits 4: MatMulNBits accuracy_level (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations)")
      ->check(CLI::Range(0, 4));
  q->add_option("--outlier-channels", args->outlier_channels,
                "int8 (microsoft ops): per activation, up to N input channels with outlier values (calibration max |x| "
                "above 4x the median channel's) multiplied in fp32 instead of int8 (default 0: off; the accurate form, "
                "as `export --int8-accurate`: 2)")
      ->check(CLI::Range(0, 64));
  q->add_option("--row-scales", args->row_scales,
                "int8 (microsoft ops): activations quantized with one scale per row (token): normalized (outputs of "
                "LayerNormalization-type nodes; the accurate form), all, or none (one scale per tensor, default)")
      ->check(CLI::IsMember({"normalized", "all", "none"}));
  q->add_flag("--no-quantize-embeddings", args->no_embeddings,
              "Keep Gather embedding tables float (default: com.microsoft.GatherBlockQuantized)");
  q->add_option("--embedding-bits", args->embedding_bits, "Embedding table bits: 8 (default) or 4")
      ->check(CLI::IsMember({4, 8}));
  q->add_option("--embedding-block-size", args->embedding_block,
                "Embedding table values per scale (16..256, power of 2 dividing the width; default 128)");
  q->add_option("--exclude", args->exclude, "Keep fp32: node or weight name, glob patterns (* ?); repeatable");
  q->add_option("--exclude-op-type", args->exclude_op_types, "Keep fp32 every node of this op type (MatMul, Gemm)");
  q->add_flag("--no-auto-policy", args->no_auto, "Quantize every eligible weight (no size / logit-layer rules)");
  q->add_option("--min-elements", args->min_elements, "Automatic policy: smallest weight quantized (default 1024)")
      ->check(trex::cli::integer_in(0, std::numeric_limits<int64_t>::max()));
  q->add_option("--external-data", args->external, "auto (above 2 GB), always or never")
      ->check(CLI::IsMember({"auto", "always", "never"}));
  q->add_flag("--allow-nonfinite", args->allow_nonfinite, "Write weights holding NaN or infinity (an error by default)");
  q->add_flag("--no-check", args->no_check, "Skip the fp32 vs int8 comparison in ONNX Runtime");
  q->add_flag("--no-fallback", args->no_fallback, "Report a missed accuracy target instead of keeping layers fp32");
  q->add_option("--min-cosine", args->min_cosine, "Accuracy target: mean cosine vs fp32 (default 0.99; 0.95 with --bits 4)")
      ->check(trex::cli::real_in(-1, 1));
  q->add_option("--min-label-agreement", args->min_label_agreement,
                "Accuracy target: argmax agreement of *logits outputs on the random-token samples (default 0.95)")
      ->check(trex::cli::real_in(0, 1));
  q->add_option("--samples", args->samples, "Sample batches compared (default 4)")->check(trex::cli::integer_in(1, 1000));
  q->add_option("--batch", args->batch, "Sample batch size (default 2)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  q->add_option("--seq", args->seq, "Sample sequence length (default 16)")
      ->check(trex::cli::integer_in(1, trex::cli::kMaxSampleTokens));
  q->add_option("--report", args->report, "Write a JSON report here");
  q->add_flag("-q,--quiet", args->quiet, "Print nothing on success");
  q->callback([args, action] { *action = [args] { return run_quantize(*args); }; });
  return q;
}
