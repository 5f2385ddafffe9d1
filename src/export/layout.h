// Output layouts (--layout): how the files of an export are named and placed so that a given runtime loads the
// folder as it is.
//   trex            (default) OUTPUT/model.onnx, model-optimized.onnx, model-quantized.onnx; sets of graphs as
//                   encoder_model.onnx + decoder_model_merged.onnx sharing weights.data. A .onnx OUTPUT is allowed.
//   optimum         optimum's ORTModel names: model.onnx (encoder_model.onnx, decoder_model_merged.onnx),
//                   variants <stem>_optimized.onnx / <stem>_quantized.onnx; config and tokenizer files beside them.
//   transformers.js config and tokenizer files at OUTPUT's root, the graphs under OUTPUT/onnx/ with transformers.js'
//                   suffixes (model.onnx, model_quantized.onnx for int8, model_q4.onnx for int4); each graph self-contained (no shared
//                   weights file, which transformers.js cannot load).
//   triton          a Triton model repository: OUTPUT/<name>/config.pbtxt + OUTPUT/<name>/1/model.onnx; each graph
//                   of a set is its own model (<name>_encoder_model, <name>_decoder_model_merged: the client runs
//                   the generation loop), each variant too (<name>_optimized, <name>_quantized).
#pragma once

#include <filesystem>
#include <optional>
#include <string>

namespace trex {

enum class Layout { kTrex, kOptimum, kTransformersJs, kTriton };
// kQuantized4: int4 weights; named as kQuantized except in transformers.js, whose dtype "q4" loads <stem>_q4.onnx
// (and "q8" <stem>_quantized.onnx).
enum class Variant { kPlain, kOptimized, kQuantized, kQuantized4 };

// The quantized variant for `bits` (4 or 8).
inline Variant quantized_variant(int bits) { return bits == 4 ? Variant::kQuantized4 : Variant::kQuantized; }

std::optional<Layout> parse_layout(const std::string& name);
const char* layout_name(Layout layout);

// The first graph's plain file for OUTPUT `output` in `layout` (`triton_name`: the Triton model's name).
// UsageError when the layout needs a folder and OUTPUT names a file, or the Triton name is not a plain name.
std::filesystem::path layout_output_file(const std::filesystem::path& output, Layout layout,
                                         const std::string& triton_name);

// The folder the layout is rooted at (where config.json and the tokenizer files go), from the first graph's file.
std::filesystem::path layout_root(const std::filesystem::path& first_file, Layout layout);

// The plain file of graph `part` ("" for single-graph models), from the first graph's plain file.
std::filesystem::path layout_graph_file(const std::filesystem::path& first_file, Layout layout,
                                        const std::string& part);

// The file of `variant` of the graph whose plain file is `plain`.
std::filesystem::path layout_variant_file(const std::filesystem::path& plain, Layout layout, Variant variant);

// A Triton model name: letters, digits, '_', '-', '.', not starting with '.', at most 128 characters.
bool valid_triton_name(const std::string& name);
// A Triton model name derived from a checkpoint argument (folder, cache folder or hub id): its last component,
// characters outside the allowed set replaced by '_'; "model" when nothing is left.
std::string triton_name_from(const std::string& model_argument);

// Writes <model folder>/config.pbtxt (atomically) for the Triton model whose file is
// <repository>/<name>/1/model.onnx: platform onnxruntime_onnx, the graph's inputs and outputs with their data
// types and dims (-1 for dynamic ones), and, when every input and output has the same dynamic first dimension,
// max_batch_size `max_batch` with dynamic batching (dims then leave the batch out). Returns the path written.
std::filesystem::path write_triton_config(const std::filesystem::path& model_file, int max_batch);

}  // namespace trex
