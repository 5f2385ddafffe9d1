// Activation statistics for weight-only quantization: the mean square of each channel of the activations that
// multiply quantizable weights, measured by running the float model in ONNX Runtime on random sample inputs
// (ids below the vocabulary read off the graph, padded masks; the same samples as the accuracy check). The
// int4 search weighs each weight row's error by its channel's mean square (passes/quantize_int4.h), which
// estimates the output error instead of the weight error.
#pragma once

#include <cstdint>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "graph/model.h"

namespace trex {

struct CalibrationOptions {
  int batches = 8;
  int64_t batch = 4, seq = 32;
  int64_t max_gram_channels = 4096;  // Gram matrices only for activations up to this width
  int threads = 2;
  uint64_t seed = 99;
  bool basic_optimizations = false;  // ORT_ENABLE_BASIC for the probe session (quicker to create)
};

// The float inputs (input 0) of MatMul / Gemm nodes whose weight is a 2-D float initializer.
std::vector<std::string> weight_activation_names(const Model& model);

// value name -> mean of x^2 over every row of the last axis (one value per channel); with `grams`, also the mean
// of x xᵀ (C×C, row-major) for activations of at most max_gram_channels channels. `model` is written with
// those values added as outputs to `scratch` (removed afterwards). Values that are graph inputs or that ONNX
// Runtime cannot return are left out. With `max_abs`, also the max |x| of each channel. Throws VerificationError when the model cannot run.
std::map<std::string, std::vector<float>> activation_mean_squares(const Model& model, const std::vector<std::string>& values,
                                                                  const std::filesystem::path& scratch,
                                                                  const CalibrationOptions& options = {},
                                                                  std::map<std::string, std::vector<double>>* grams = nullptr,
                                                                  std::map<std::string, std::vector<float>>* max_abs = nullptr);

// Outlier input channels of int8 activations (QuantizePolicy::outlier_channels): for each activation, up to
// `per_activation` channels with the largest max |x| over the calibration samples, keeping only those whose max is
// above `ratio` times the median channel's max (an activation without such outliers gets none).
std::map<std::string, std::vector<int64_t>> outlier_channels(const std::map<std::string, std::vector<float>>& max_abs,
                                                             int per_activation, double ratio);

}  // namespace trex
