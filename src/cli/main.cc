// The `trex` command: parses arguments and calls the library. No export logic lives here.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <iostream>

#include "export/export.h"
#include "util/error.h"

namespace {

using trex::ExitCode;

int fail(ExitCode code, const std::string& message) {
  std::cerr << "trex: error: " << message << "\n";
  return static_cast<int>(code);
}

std::string mib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.1f MiB", static_cast<double>(bytes) / (1 << 20));
  return buf;
}

struct ExportArgs {
  std::string model, output, pipeline, static_shape, external = "auto";
  int opset = trex::kDefaultOpset;
  bool no_check = false, quiet = false;
};

int run_export(const ExportArgs& a) {
  trex::ExportOptions o;
  o.model_dir = a.model;
  o.output = a.output;
  o.pipeline = a.pipeline;
  o.opset = a.opset;
  o.check = !a.no_check;
  if (a.external == "auto") o.external = trex::ExternalData::kAuto;
  else if (a.external == "always") o.external = trex::ExternalData::kAlways;
  else if (a.external == "never") o.external = trex::ExternalData::kNever;
  else throw trex::UsageError("--external-data must be auto, always or never, got '" + a.external + "'");
  if (!a.static_shape.empty()) {
    long long b = 0, s = 0;
    char extra = 0;
    if (std::sscanf(a.static_shape.c_str(), "%lld,%lld%c", &b, &s, &extra) != 2 || b <= 0 || s <= 0)
      throw trex::UsageError("--static-shape wants BATCH,SEQUENCE (two positive integers), got '" + a.static_shape + "'");
    o.static_shape = std::make_pair(static_cast<int64_t>(b), static_cast<int64_t>(s));
  }
  const bool tty = ::isatty(STDERR_FILENO) && !a.quiet;
  if (!a.quiet) o.log = [](const std::string& s) { std::cout << s << "\n" << std::flush; };
  if (tty) {
    o.progress = [last = -1](size_t done, size_t total) mutable {
      int pct = total ? static_cast<int>(100.0 * static_cast<double>(done) / static_cast<double>(total)) : 100;
      if (pct == last) return;
      last = pct;
      std::cerr << "\rwriting weights " << pct << "%" << (pct >= 100 ? "\r                    \r" : "") << std::flush;
    };
  }
  auto t0 = std::chrono::steady_clock::now();
  trex::ExportResult r = trex::export_onnx(o);
  double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (!a.quiet) {
    if (!r.unused_tensors.empty()) {
      std::string list;
      for (size_t i = 0; i < r.unused_tensors.size() && i < 8; ++i) list += (i ? ", " : "") + r.unused_tensors[i];
      if (r.unused_tensors.size() > 8) list += ", ...";
      std::cout << "note: " << r.unused_tensors.size() << " checkpoint tensor(s) not used by the "
                << trex::task_name(r.task) << " head: " << list << "\n";
    }
    std::cout << "wrote " << r.written.model_path.string() << " (" << mib(r.written.model_bytes) << ")";
    if (!r.written.data_path.empty())
      std::cout << " + external data " << r.written.data_path.string() << " (" << mib(r.written.data_bytes) << ")";
    std::cout << "\n";
    if (r.check)
      std::cout << "load check: ok (ONNX Runtime ran batch " << o.static_shape.value_or(std::make_pair(2L, 8L)).first
                << ": " << r.check->summary() << ")\n";
    else
      std::cout << "load check: skipped (--no-check)\n";
    std::printf("done in %.2f s\n", secs);
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"trex " TREX_VERSION
               ": export Hugging Face transformer checkpoints to ONNX, natively.\n"
               "Exit codes: 0 ok, 1 usage error, 2 input error (checkpoint), 3 verification failed, 4 output error."};
  app.set_version_flag("--version", std::string("trex ") + TREX_VERSION);
  app.require_subcommand(1);

  ExportArgs ea;
  auto* ex = app.add_subcommand("export", "Export a checkpoint folder to ONNX (plain, standard ONNX ops)");
  ex->add_option("--model,-m", ea.model, "Checkpoint folder (config.json + model.safetensors / pytorch_model.bin, "
                                         "sharded or not)")->required();
  ex->add_option("--pipeline,-p", ea.pipeline,
                 "Head to export: feature-extraction, text-classification (= sentiment-analysis), "
                 "token-classification (= ner), question-answering, fill-mask. Default: the head named by "
                 "config.json's architectures, else feature-extraction");
  ex->add_option("--opset", ea.opset, "ONNX opset, 11-21 (default 17: first opset with LayerNormalization)");
  ex->add_option("--static-shape", ea.static_shape, "Fix the input shape to BATCH,SEQUENCE instead of dynamic axes");
  ex->add_option("--external-data", ea.external,
                 "auto (weights in OUTPUT.onnx.data when the model passes 2 GB), always, never");
  ex->add_flag("--no-check", ea.no_check, "Skip the ONNX Runtime load check after writing");
  ex->add_flag("--quiet,-q", ea.quiet, "Print nothing but errors");
  ex->add_option("output", ea.output, "Output .onnx path")->required();

  try {
    app.parse(argc, argv);
  } catch (const CLI::CallForHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForAllHelp& e) {
    return app.exit(e);
  } catch (const CLI::CallForVersion& e) {
    return app.exit(e);
  } catch (const CLI::ParseError& e) {
    std::cerr << "trex: error: " << e.what() << " (see trex " << (ex->parsed() ? "export " : "") << "--help)\n";
    return static_cast<int>(ExitCode::kUsage);
  }

  try {
    if (ex->parsed()) return run_export(ea);
  } catch (const trex::Error& e) {
    return fail(e.code(), e.what());
  } catch (const std::exception& e) {
    return fail(ExitCode::kInternal, std::string("internal error: ") + e.what());
  }
  return 0;
}
