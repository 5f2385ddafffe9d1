#include "export/export.h"
#include "passes/half.h"

#include <algorithm>
#include <cstring>
#include <exception>
#include <future>
#include <memory>
#include <set>

#include "export/companions.h"
#include "runtime/ort_session.h"
#include "util/checkpoint_buffers.h"
#include "util/error.h"
#include "util/output_path.h"
#include "util/strings.h"

namespace trex {

namespace fs = std::filesystem;

namespace {

// Written files the load check reads right after: up to this many bytes they go through the page cache, above
// it with O_DIRECT (writer.cc). Measured here (docs/fast_export.md): a 282 MB Marian exports with its check in
// 1.11 s buffered vs 1.50 s direct (the check read the file back from disk), BERT-base in 1.41 s vs 1.87 s; an
// 850 MB t5-base in 2.06-3.10 s vs 2.11-2.27 s.
constexpr size_t kPageCacheWriteMax = size_t{512} << 20;

// The checkpoint's weights as float32 (what the plain graphs hold).
size_t float32_bytes(const WeightStore& weights) {
  size_t total = 0;
  for (const auto& name : weights.names()) {
    const TensorView* t = weights.find(name);
    const size_t element = dtype_size(t->dtype);
    total += element ? t->nbytes / element * 4 : t->nbytes;
  }
  return total;
}

void add_meta(onnx::ModelProto& m, const std::string& k, const std::string& v) {
  auto* p = m.add_metadata_props();
  p->set_key(k);
  p->set_value(v);
}

// Decoders and graph sets are quantized while they are built (no fp32 file is read back): the int4 bytes are
// computed from the mapped checkpoint as each tensor is written.
Model quantize_built(const Model& in, const ExportOptions& o, ExportedGraph* gr, const WeightStore& weights) {
  QuantizeReport report;
  Model m;
  if (o.quantize_bits == 4) {
    Int4Policy p;
    p.params.block_size = o.int4_block_size;
    p.params.symmetric = o.int4_symmetric;
    p.params.search = o.int4_clip_stride > 0;
    p.params.clip_stride = std::max(1, o.int4_clip_stride);
    p.accuracy_level = o.int4_accuracy_level;
    p.streamed = true;
    // trex's MatMul weights are `<checkpoint name>.T`, the checkpoint's [out, in] tensor transposed: the int4
    // blocks run along `in`, so the checkpoint's rows are quantized directly (converted to fp32, not transposed).
    p.row_source = [&weights](const std::string& name, const Shape& dims) -> std::optional<TensorData> {
      if (dims.size() != 2 || !ends_with(name, ".T")) return std::nullopt;
      const TensorView* t = weights.find(name.substr(0, name.size() - 2));
      if (!t || t->shape != Shape{dims[1], dims[0]} ||
          (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16))
        return std::nullopt;
      if (t->dtype == DType::kF32) return TensorData::view(DType::kF32, t->shape, t->data);
      const TensorView copy = *t;
      return TensorData::produced(DType::kF32, t->shape, [copy](std::byte* dst) {
               convert_to_f32(copy, reinterpret_cast<float*>(dst));
             }).with_source(t->data, t->nbytes);
    };
    m = quantize_int4_model(in, p, &report);
  } else {
    m = quantize_model(in, QuantizePolicy{}, &report);
  }
  gr->quantized_layers = report.quantized.size();
  gr->kept_layers = report.skipped.size();
  if (o.quantize_embeddings) {
    EmbeddingReport er;
    m = quantize_embeddings(m, EmbeddingPolicy{}, &er);
    gr->quantized_tables = er.quantized.size();
  }
  for (auto& p : *m.proto.mutable_metadata_props())
    if (p.key() == "graph") p.set_value(p.value() + (o.quantize_bits == 4 ? ", int4 MatMulNBits" : ", int8"));
  return m;
}

bool quantized_while_built(const ExportOptions& o, Task task, size_t num_parts) {
  return o.quantize && (task == Task::kCausalLM || num_parts > 1);
}

}  // namespace

// Validates what can be validated before any weight is read.
const Architecture& resolve(const ModelConfig& config, const ExportOptions& options, Task* task) {
  const Architecture* arch = find_architecture(config.model_type);
  if (!arch) {
    std::string types;
    for (const auto& t : supported_model_types()) types += (types.empty() ? "" : ", ") + t;
    throw InputError(config.file(), "unsupported model_type '" + config.model_type + "' (supported: " + types + ")");
  }
  *task = default_task(config);
  // A checkpoint without a head named in config.json gets the architecture's own first task (decoders: LM).
  if (!arch->tasks.count(*task)) *task = *arch->tasks.begin();
  if (!options.pipeline.empty()) {
    auto t = parse_task(options.pipeline);
    if (!t) throw UsageError("unknown pipeline '" + options.pipeline + "' (known: " + known_task_names() + ")");
    *task = *t;
  }
  if (!arch->tasks.count(*task))
    throw UsageError("pipeline '" + task_name(*task) + "' is not supported for model_type '" + config.model_type + "'");
  const Capabilities& caps = arch->capabilities;
  const std::string what = "model_type '" + config.model_type + "'";
  if (options.optimize && !caps.optimize)
    throw UsageError("--optimize is not supported yet for " + what + " (the plain graph is exported without it)");
  if (options.quantize && !caps.quantize) throw UsageError("--quantize is not supported yet for " + what);
  if (options.quantize && options.quantize_bits != 4 && options.quantize_bits != 8)
    throw UsageError("--quantize takes int8 or int4");
  if (options.quantize && options.quantize_bits == 4)
    check_int4_params({options.int4_block_size, options.int4_symmetric, true});
  if (options.quantized_only && !options.quantize) throw UsageError("--quantized-only needs --quantize");
  if (options.static_shape && !caps.static_shape)
    throw UsageError("--static-shape does not apply to " + what + " (its cache lengths change at every step)");
  if (options.opset < kMinOpset || options.opset > kMaxOpset)
    throw UsageError("opset " + std::to_string(options.opset) + " is not supported (" + std::to_string(kMinOpset) + "-" +
                     std::to_string(kMaxOpset) + ")");
  return *arch;
}

void check_torchscript_supported(const ModelConfig& config) {
  const Architecture* arch = find_architecture(config.model_type);
  if (arch && !arch->capabilities.torchscript)
    throw UsageError("TorchScript export is not supported for model_type '" + config.model_type +
                     "' (models with a KV cache export to ONNX only)");
}

fs::path resolve_output_file(const fs::path& output) {
  // A model file name, or an existing file (which the input/output checks then judge), is the output itself;
  // anything else names a folder — folder names often hold dots ("TinyLlama-1.1B").
  const std::string ext = output.extension().string();
  std::error_code ec;
  if (ext == ".onnx" || ext == ".pt" || ext == ".pth" || fs::is_regular_file(output, ec)) return output;
  return output / "model.onnx";
}

fs::path resolve_output_file(const ExportOptions& options) {
  return options.layout == Layout::kTrex ? resolve_output_file(options.output)
                                         : layout_output_file(options.output, options.layout, options.triton_name);
}

fs::path optimized_path(const fs::path& output) {
  return output.parent_path() / (output.stem().string() + "-optimized" + output.extension().string());
}

fs::path quantized_path(const fs::path& output) {
  return output.parent_path() / (output.stem().string() + "-quantized" + output.extension().string());
}

BuiltModel build_model(const ModelConfig& config, const WeightStore& weights, const ExportOptions& options,
                       Lowering lowering, const std::string& part, bool quantization_source) {
  Task task;
  const Architecture* arch = &resolve(config, options, &task);
  if (part.empty() && !arch->graphs.empty())
    throw UsageError("model_type '" + config.model_type + "' exports a set of graphs; build one of them by name");

  GraphBuilder g(options.opset, config.model_type + "_" + (part.empty() ? task_name(task) : part), lowering);
  g.set_gelu_approximation(options.gelu_approximation);
  g.set_quantization_source(quantization_source);
  Dim batch("batch_size"), seq("sequence_length");
  if (options.static_shape) {
    batch = Dim(options.static_shape->first);
    seq = Dim(options.static_shape->second);
  }
  BuildContext ctx{config, weights, g, task, batch, seq, part};
  std::vector<GraphOutput> outputs = arch->build(ctx);

  BuiltModel built{Model{}, config, task, LoadCheckSpec{}};
  for (const auto& o : outputs) {
    g.output(o.value, o.name, DType::kF32, o.dims);
    built.check_spec.outputs.emplace_back(o.name, o.dims);
  }
  built.model = g.finish(TREX_VERSION);
  auto& proto = built.model.proto;
  proto.set_doc_string("Exported by trex from a " + config.model_type + " checkpoint for " + task_name(task));
  add_meta(proto, "model_type", config.model_type);
  // The pipeline as asked (translation_en_to_de, summarization, ...): they share one export.
  add_meta(proto, "pipeline", options.pipeline.empty() ? task_name(task) : options.pipeline);
  if (!part.empty()) add_meta(proto, "graph_name", part);
  if (!config.architectures.empty()) add_meta(proto, "architecture", config.architectures[0]);
  add_meta(proto, "trex_version", TREX_VERSION);
  add_meta(proto, "graph", lowering == Lowering::kOrt ? "onnxruntime-fused" : "plain");

  // Dummy input ranges for the load check.
  auto& spec = built.check_spec;
  if (options.static_shape) {
    spec.batch = options.static_shape->first;
    spec.seq = options.static_shape->second;
  }
  for (const auto& [name, sample] : g.input_samples())
    if (sample.kind == InputSample::kIds) spec.input_limits[name] = sample.limit;
  if (!spec.input_limits.count("input_ids")) spec.input_limits["input_ids"] = config.get_int("vocab_size", 2);
  if (!spec.input_limits.count("token_type_ids"))
    spec.input_limits["token_type_ids"] = config.get_int("type_vocab_size", 1);
  return built;
}

void check_export_paths(const ExportOptions& options) {
  std::error_code dir_ec;
  if (!fs::exists(options.model_dir, dir_ec)) throw InputError(options.model_dir.string(), "checkpoint folder does not exist");
  if (!fs::is_directory(options.model_dir, dir_ec)) throw InputError(options.model_dir.string(), "not a folder");
  // Other layouts create their subfolders (onnx/, NAME/1/) as they write: their root must be writable.
  check_output_path(options.layout == Layout::kTrex ? options.output
                                                    : layout_root(options.output, options.layout) / "config.json");
  std::vector<fs::path> outputs{options.output, external_data_path(options.output)};
  if (options.optimize) outputs.push_back(layout_variant_file(options.output, options.layout, Variant::kOptimized));
  if (options.quantize) {
    const fs::path q = layout_variant_file(options.output, options.layout, quantized_variant(options.quantize_bits));
    outputs.push_back(q);
    outputs.push_back(external_data_path(q));
    outputs.push_back(options.output.parent_path() / "weights-quantized.data");
  }
  check_outputs_not_inputs(outputs, checkpoint_input_files(options.model_dir));
}

namespace {

// What genai_config.json needs about a decoder, read off its declared outputs and config.json.
CompanionOptions companion_options(const ExportOptions& options, const ModelConfig& config, const LoadCheckSpec& spec,
                                   Task task) {
  CompanionOptions c;
  c.model_dir = options.model_dir;
  c.output_dir = layout_root(options.output, options.layout);
  // genai runs the fastest graph the folder has (the quantized one when there is one; a path relative to the
  // folder: onnx/model.onnx for transformers.js).
  const fs::path model = options.quantize   ? layout_variant_file(options.output, options.layout, quantized_variant(options.quantize_bits))
                         : options.optimize ? layout_variant_file(options.output, options.layout, Variant::kOptimized)
                                            : options.output;
  c.model_file = model.lexically_relative(c.output_dir).generic_string();
  if (c.model_file.empty() || c.model_file.rfind("..", 0) == 0) c.model_file = model.filename().string();
  c.task = task;
  for (const auto& [name, dims] : spec.outputs) {
    if (name == "logits" && dims.size() == 3) c.vocab = dims[2].value;
    if (name.rfind("present.", 0) == 0 && name.size() > 4 && name.compare(name.size() - 4, 4, ".key") == 0 &&
        dims.size() == 4) {
      ++c.num_layers;
      c.num_kv_heads = dims[1].value;
      c.head_dim = dims[3].value;
    }
  }
  c.num_heads = config.get_int("num_attention_heads", config.get_int("n_head", 0));
  c.hidden = config.get_int("hidden_size", config.get_int("n_embd", 0));
  return c;
}

ExportResult export_to(const ExportOptions& options, bool output_is_file);

}  // namespace

ExportResult export_onnx(const ExportOptions& requested) {
  // OUTPUT is a .onnx path or a folder (model.onnx inside); missing folders are created, and removed again when
  // the export fails.
  ExportOptions options = requested;
  options.output = resolve_output_file(requested);
  const fs::path out_dir =
      options.layout == Layout::kTrex ? options.output.parent_path() : layout_root(options.output, options.layout);
  std::vector<fs::path> created;
  std::error_code ec;
  if (!out_dir.empty() && !fs::exists(out_dir, ec) && fs::exists(options.model_dir, ec)) {
    for (fs::path p = out_dir; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) created.push_back(p);
    fs::create_directories(out_dir, ec);
    if (ec) throw OutputError(out_dir.string(), "cannot create the output folder: " + ec.message());
  }
  try {
    return export_to(options, options.output == requested.output);
  } catch (...) {
    for (const auto& p : created) fs::remove(p, ec);  // innermost first; only folders left empty
    throw;
  }
}

namespace {

ExportResult export_to(const ExportOptions& options, bool output_is_file) {
  auto log = [&](const std::string& s) {
    if (options.log) options.log(s);
  };
  check_export_paths(options);

  ModelConfig config = ModelConfig::load(options.model_dir / "config.json");
  Task task;
  const Architecture& arch = resolve(config, options, &task);
  if (!arch.graphs.empty() && output_is_file)
    throw UsageError(options.output.string() + ": model_type '" + config.model_type +
                     "' exports a set of graphs (" + std::to_string(arch.graphs.size()) +
                     " .onnx files + config and tokenizer files): OUTPUT must be a folder");
  const Layout layout = options.layout;
  auto variant = [layout](const fs::path& plain, Variant v) { return layout_variant_file(plain, layout, v); };
  if (task == Task::kCausalLM || !arch.graphs.empty() || options.write_companions || layout != Layout::kTrex) {
    // Companion files (config.json, tokenizer files) would replace the checkpoint's own: refuse before writing.
    std::error_code dir_ec;
    const fs::path dir = layout_root(options.output, layout);
    if (fs::equivalent(dir, options.model_dir, dir_ec))
      throw UsageError(dir.string() + ": the output folder is the checkpoint folder; choose another one");
  }

  ExportResult result;
  result.model_type = config.model_type;
  WriteOptions wo;
  wo.external = options.external;
  wo.progress = options.progress;
  wo.allow_nonfinite = options.allow_nonfinite;
  wo.source_for_messages = options.model_dir.string();
  // The graphs of the set: OUTPUT itself for single-graph models, else <folder>/<name>.onnx each.
  const std::vector<std::string> parts = arch.graphs.empty() ? std::vector<std::string>{""} : arch.graphs;
  std::vector<fs::path> paths;
  for (const auto& part : parts) paths.push_back(layout_graph_file(options.output, layout, part));
  // Folders a layout puts files in (onnx/, <name>/1/, <name>_optimized/1/): created as needed, removed again on
  // failure when left empty.
  OutputFolders folders;
  std::vector<LoadCheckSpec> plain_specs(parts.size()), fused_specs(parts.size());
  std::error_code ec;
  auto remove_written = [&](const WriteResult& w) {
    fs::remove(w.model_path, ec);
    if (!w.data_path.empty()) fs::remove(w.data_path, ec);
  };
  auto remove_all = [&]() {
    for (const auto& gr : result.graphs) {
      remove_written(gr.written);
      if (gr.optimized) remove_written(*gr.optimized);
      if (gr.quantized) remove_written(*gr.quantized);
    }
    if (result.quantized) remove_written(result.quantized->written);
    for (const auto& f : result.companions) fs::remove(f, ec);
    for (const auto& f : result.triton_configs) fs::remove(f, ec);
  };
  const bool quantize_now = quantized_while_built(options, task, parts.size());
  if (options.quantized_only && !quantize_now)
    throw UsageError("--quantized-only applies to decoders and encoder-decoders (an encoder's quantized file is "
                     "made from and compared with its fp32 file)");
  if (options.int8_accurate && quantize_now)
    throw UsageError("--int8-accurate applies to encoders (decoders and encoder-decoders are quantized while they "
                     "are written, per channel, without calibration)");
  std::vector<LoadCheckSpec> quant_specs(parts.size());
  // Whether the graph genai_config.json names (the quantized one, else the optimized one, else the plain one:
  // assigned in that order below, the last wins) updates its KV cache in place.
  bool genai_cache_in_place = false;
  // The graphs of a set share their weights (embeddings, tied heads): one external-data file per lowering holds
  // each tensor once, unless --external-data never asks for self-contained files.
  // The quantized set shares weights-quantized.data: the embedding table the encoder and the decoder both read
  // is quantized the same way in both (same names, same bytes), so it is stored once there too; fp32 and
  // quantized files share nothing, so either set can be deleted (or shipped) alone.
  std::unique_ptr<SharedExternalData> shared_plain, shared_fused, shared_quant;
  WriteOptions wo_plain = wo, wo_fused = wo, wo_quant = wo;
  // Not for transformers.js (it loads each graph's own file) nor Triton (each graph is its own model folder).
  const bool can_share = layout == Layout::kTrex || layout == Layout::kOptimum;
  if (parts.size() > 1 && options.external != ExternalData::kNever && can_share) {
    if (!options.quantized_only) {
      shared_plain = std::make_unique<SharedExternalData>(options.output.parent_path() / "weights.data");
      wo_plain.shared = shared_plain.get();
    }
    if (quantize_now) {
      shared_quant = std::make_unique<SharedExternalData>(options.output.parent_path() / "weights-quantized.data");
      wo_quant.shared = shared_quant.get();
    }
    if (options.optimize && !options.quantized_only) {
      shared_fused = std::make_unique<SharedExternalData>(options.output.parent_path() / "weights-optimized.data");
      wo_fused.shared = shared_fused.get();
    }
  }
  try {
    // The checkpoint stays mapped only while models are built and written; the checks below load the written
    // files in ONNX Runtime, and the two must not be resident at the same time (peak memory).
    WeightStore weights = open_checkpoint_weights(options.model_dir, options.framework);
    log("read " + std::to_string(weights.size()) + " tensors (" + std::to_string(weights.total_bytes() >> 20) +
        " MiB) from " + options.model_dir.string());
    if (options.check && float32_bytes(weights) <= kPageCacheWriteMax) {
      for (WriteOptions* w : {&wo_plain, &wo_fused, &wo_quant}) w->direct_io = false;
      for (auto* shared : {shared_plain.get(), shared_fused.get(), shared_quant.get()})
        if (shared) shared->use_page_cache();
    }
    std::set<std::string> used;
    for (size_t p = 0; p < parts.size(); ++p) {
      ExportedGraph gr;
      gr.name = parts[p].empty() ? options.output.stem().string() : parts[p];
      if (options.quantized_only) {
        // Quantized from the plain graph (the fused one with --optimize), which is never written: the plain
        // graph's initializer names tell which checkpoint tensors were used.
        BuiltModel built = build_model(config, weights, options, Lowering::kPlain, parts[p], true);
        result.task = built.task;
        for (const auto& i : built.model.initializers) {
          std::string n = i.name;
          for (const char* suffix : {".T", ".row0"})
            if (n.size() > std::strlen(suffix) && ends_with(n, suffix)) n.resize(n.size() - std::strlen(suffix));
          used.insert(n);
        }
        if (options.optimize) {
          built.model = Model{};
          BuiltModel fused = build_model(config, weights, options, Lowering::kOrt, parts[p], true);
          built.model = std::move(fused.model);
        }
        Model q = quantize_built(built.model, options, &gr, weights);
        built.model = Model{};
        genai_cache_in_place = kv_cache_updated_in_place(q.proto.graph());
        result.num_nodes += static_cast<size_t>(q.proto.graph().node_size());
        result.num_initializers += q.initializers.size();
        log("built " + (parts[p].empty() ? task_name(built.task) : parts[p]) + " graph, quantized (" +
            (options.quantize_bits == 4 ? "int4" : "int8") + "): " + std::to_string(gr.quantized_layers) +
            " weights quantized, " + std::to_string(gr.kept_layers) + " kept float, " +
            std::to_string(gr.quantized_tables) + " embedding table(s)");
        paths[p] = variant(paths[p], quantized_variant(options.quantize_bits));
        folders.create_parents_of(paths[p]);
        gr.written = write_model(q, paths[p], wo_quant);
        result.graphs.push_back(gr);
        plain_specs[p] = built.check_spec;
        continue;
      }
      BuiltModel built = build_model(config, weights, options, Lowering::kPlain, parts[p]);
      if (options.fp16) {
        if (parts.size() > 1) throw UsageError("--dtype fp16 applies to single-graph models (encoders, decoders)");
        convert_to_fp16(built.model);
      }
      result.task = built.task;
      result.num_nodes += static_cast<size_t>(built.model.proto.graph().node_size());
      result.num_initializers += built.model.initializers.size();
      for (const auto& i : built.model.initializers) {
        std::string n = i.name;
        for (const char* suffix : {".T", ".row0"})
          if (n.size() > std::strlen(suffix) && ends_with(n, suffix)) n.resize(n.size() - std::strlen(suffix));
        used.insert(n);
      }
      log("built " + (parts[p].empty() ? task_name(built.task) : parts[p]) + " graph: " +
          std::to_string(built.model.proto.graph().node_size()) + " nodes, " +
          std::to_string(built.model.initializers.size()) + " initializers, opset " + std::to_string(options.opset));
      folders.create_parents_of(paths[p]);
      genai_cache_in_place = kv_cache_updated_in_place(built.model.proto.graph());
      gr.written = write_model(built.model, paths[p], wo_plain);
      result.graphs.push_back(gr);
      plain_specs[p] = built.check_spec;
      if (options.optimize) {
        built.model = Model{};  // release the plain graph before building the fused one
        BuiltModel fused = build_model(config, weights, options, Lowering::kOrt, parts[p]);
        log("built optimized graph: " + std::to_string(fused.model.proto.graph().node_size()) +
            " nodes (ONNX Runtime fused ops)");
        folders.create_parents_of(variant(paths[p], Variant::kOptimized));
        genai_cache_in_place = kv_cache_updated_in_place(fused.model.proto.graph());
        result.graphs.back().optimized = write_model(fused.model, variant(paths[p], Variant::kOptimized), wo_fused);
        fused_specs[p] = fused.check_spec;
      }
      if (quantize_now) {
        built.model = Model{};
        BuiltModel source = build_model(config, weights, options, options.optimize ? Lowering::kOrt : Lowering::kPlain,
                                        parts[p], true);
        ExportedGraph& g = result.graphs.back();
        Model q = quantize_built(source.model, options, &g, weights);
        source.model = Model{};
        genai_cache_in_place = kv_cache_updated_in_place(q.proto.graph());
        log("quantized " + g.name + (options.optimize ? " (optimized)" : "") + " (" +
            (options.quantize_bits == 4 ? "int4" : "int8") + "): " + std::to_string(g.quantized_layers) +
            " weights quantized, " + std::to_string(g.kept_layers) + " kept float, " +
            std::to_string(g.quantized_tables) + " embedding table(s)");
        folders.create_parents_of(variant(paths[p], quantized_variant(options.quantize_bits)));
        g.quantized = write_model(q, variant(paths[p], quantized_variant(options.quantize_bits)), wo_quant);
        quant_specs[p] = source.check_spec;
      }
    }
    for (const auto& n : weights.names())
      if (!used.count(n) && !is_known_buffer(n)) result.unused_tensors.push_back(n);
    if (shared_plain) shared_plain->commit();
    if (shared_fused) shared_fused->commit();
    if (shared_quant) shared_quant->commit();
  } catch (const Error&) {
    remove_all();
    throw;
  }

  // The graphs of a set (encoder + decoder) are checked side by side: each check is mostly ONNX Runtime faulting
  // in the external data it maps, and two readers of the shared file get more from the disk than one.
  if (options.check) {
    std::vector<std::future<LoadCheckResult>> checks;
    const int threads = std::max(1, check_threads() / static_cast<int>(parts.size()));
    for (size_t p = 0; p < parts.size(); ++p) {
      LoadCheckSpec spec = plain_specs[p];
      spec.threads = threads;
      checks.push_back(std::async(std::launch::async, [&paths, p, spec] { return load_check(paths[p], spec); }));
    }
    std::exception_ptr failed;
    for (size_t p = 0; p < parts.size(); ++p) {
      try {
        result.graphs[p].check = checks[p].get();
      } catch (...) {
        if (!failed) failed = std::current_exception();
      }
    }
    if (failed) {
      remove_all();
      std::rethrow_exception(failed);
    }
  }
  for (size_t p = 0; p < parts.size(); ++p) {
    ExportedGraph& gr = result.graphs[p];
    try {
      // Decoders: prefill + one decode step; encoder-decoders: the encoder, then the decoder's two steps.
      if (options.check && gr.quantized) gr.quantized_check = load_check(variant(paths[p], quantized_variant(options.quantize_bits)), quant_specs[p]);
    } catch (const Error&) {
      remove_all();
      throw;
    }
    if (!options.optimize || options.quantized_only) continue;
    const fs::path opt_path = variant(paths[p], Variant::kOptimized);
    try {
      load_check(opt_path, fused_specs[p]);
      VerifyOptions vo;
      vo.atol = options.optimize_atol;
      vo.input_limits = plain_specs[p].input_limits;
      if (options.static_shape) {
        vo.batch = options.static_shape->first;
        vo.seq = options.static_shape->second;
      }
      // Decoders: a padded query row attends to nothing, and what each graph returns for it differs (garbage in
      // both, then cached as the padding's K/V, which later steps mask out). The comparison runs unpadded rows;
      // left-padded batches are checked against transformers by the step-by-step oracle tests.
      if (task == Task::kCausalLM) vo.padded = false;
      // Decoders: first steps (empty cache), then decode steps over a random 7-token cache, in the same two
      // sessions. Without prepacking: it would hold a second copy of every weight for a few sample runs.
      const bool stateful = task == Task::kCausalLM || (task == Task::kSeq2SeqLM && p > 0);
      if (stateful) vo.decode_past = 7;
      vo.prepack = false;
      vo.threads = check_threads();
      // One sample batch of each kind for models over 1 GiB of weights (a 1B decoder's run is seconds), two below.
      if (gr.written.model_bytes + gr.written.data_bytes > (size_t{1} << 30)) vo.batches = 1;
      gr.optimized_verify = verify_models(paths[p], opt_path, vo);
      if (!gr.optimized_verify->ok()) {
        std::string worst;
        for (const auto& o : gr.optimized_verify->outputs)
          worst += (worst.empty() ? "" : ", ") + o.name + " max abs diff " + std::to_string(o.max_abs_diff);
        throw VerificationError(opt_path.string() + ": optimized model differs from the plain model beyond atol " +
                                std::to_string(vo.atol) + " (" + worst + ")");
      }
    } catch (const Error&) {
      remove_all();
      throw;
    }
  }
  {
    const ExportedGraph& first = result.graphs.front();
    result.written = first.written;
    result.check = first.check;
    result.optimized = first.optimized;
    result.optimized_verify = first.optimized_verify;
  }
  const LoadCheckSpec& plain_spec = plain_specs.back();
  const fs::path opt_path = variant(options.output, Variant::kOptimized);
  const fs::path quant_path = variant(options.output, quantized_variant(options.quantize_bits));

  try {
  // Files that make the output folder loadable as it is (generative models always; encoders when OUTPUT is a
  // folder). A Triton repository holds models only.
  if ((task == Task::kCausalLM || task == Task::kSeq2SeqLM || options.write_companions || layout != Layout::kTrex) &&
      layout != Layout::kTriton) {
    CompanionOptions co = companion_options(options, config, plain_spec, task);
    co.share_cache_buffer = task == Task::kCausalLM && genai_cache_in_place;
    result.companions = write_companion_files(config, co);
  }

  if (options.quantize && !quantize_now) {
    QuantizeFileOptions qo;
    qo.bits = options.quantize_bits;
    qo.int4.params.block_size = options.int4_block_size;
    qo.int4.params.symmetric = options.int4_symmetric;
    qo.int4.accuracy_level = options.int4_accuracy_level;
    qo.embeddings = options.quantize_embeddings;
    if (options.quantize_bits == 4) qo.min_cosine = 0.95;  // as `trex quantize --bits 4`
    qo.write = wo;
    qo.write.progress = nullptr;
    qo.check = true;  // the accuracy check drives the fp32 fallback of sensitive layers
    if (options.int8_accurate) {
      qo.outlier_channels = 2;
      qo.row_scales = RowScales::kNormalized;
    }
    // The accurate int8 form is made from the plain graph: its per-row scales and fp32 outlier channels need the
    // separate Q/K/V MatMuls, which the fused Attention (QAttention: one per-tensor input scale) does not have;
    // ONNX Runtime fuses the int8 graph at load time (docs/quantization.md). The others read the fused graph.
    const fs::path source = options.optimize && !options.int8_accurate ? opt_path : options.output;
    log("quantizing " + source.filename().string() +
        (options.quantize_bits == 4 ? " (int4 MatMulNBits, calibrated GPTQ)" : " (int8, dynamic)"));
    folders.create_parents_of(quant_path);
    result.quantized = quantize_file(source, quant_path, qo);
  }
  if (layout == Layout::kTriton) {
    std::vector<fs::path> models;
    for (const auto& gr : result.graphs) {
      models.push_back(gr.written.model_path);
      if (gr.optimized) models.push_back(gr.optimized->model_path);
      if (gr.quantized) models.push_back(gr.quantized->model_path);
    }
    if (result.quantized) models.push_back(result.quantized->written.model_path);
    for (const auto& m : models) result.triton_configs.push_back(write_triton_config(m, options.triton_max_batch));
  }
  } catch (const Error&) {
    remove_all();
    throw;
  }
  folders.keep();
  if (result.quantized && result.quantized->missed_target) {
    const auto& c = *result.quantized->comparison;
    throw VerificationError(quant_path.string() + (options.quantize_bits == 4 ? ": int4" : ": int8") + " model misses its accuracy target vs fp32 (mean cosine " +
                            std::to_string(c.mean_cosine) + "; the model was written, see trex quantize --help)");
  }
  return result;
}

}  // namespace

}  // namespace trex
