// Closed, validated access to a checkpoint's tensors while a graph is built: every request names the
// tensor and its expected shape; problems are collected and reported together by check().
#pragma once

#include <string>
#include <vector>

#include "graph/graph_builder.h"
#include "io/weight_store.h"

namespace trex {

class Weights {
 public:
  // base_prefix: the base model's attribute in task models ("bert"); used when the checkpoint's names carry it.
  Weights(const WeightStore& store, GraphBuilder& graph, const std::string& base_prefix);

  // Full name of a base-model tensor ("embeddings.word_embeddings.weight" → "bert.embeddings...").
  std::string base(const std::string& name) const { return prefix_ + name; }
  bool has(const std::string& full_name) const { return store_.contains(full_name); }

  // The tensor as an fp32 initializer named after it. Records a problem when missing or mis-shaped.
  Value get(const std::string& full_name, const Shape& expected);
  // A 2-D [rows, cols] tensor stored transposed ([cols, rows]) as `<name>.T`, for x @ W^T as MatMul.
  Value get_transposed(const std::string& full_name, const Shape& expected);
  // One row of a 2-D tensor, as a 1-D initializer `<name>.row<i>`.
  Value get_row(const std::string& full_name, const Shape& expected, int64_t row);
  // Like get(), but when `full_name` is absent uses `fallback` (e.g. an untied decoder weight → word embeddings).
  Value get_or(const std::string& full_name, const std::string& fallback, const Shape& expected);

  // Q, K, V nn.Linear weights [hidden, hidden] packed as one transposed [hidden, 3 * hidden] tensor and their
  // biases as [3 * hidden] (ONNX Runtime's Attention layout). Named `<common prefix>qkv.weight` / `.bias`.
  std::pair<Value, Value> get_packed_qkv(const std::string& q, const std::string& k, const std::string& v, int64_t hidden);
  // table [rows, dim] with row `row` of `row_source` [n, dim] added to every row (folds a constant token-type
  // embedding into the position table). Named `<table>+<row_source>.row<i>`.
  Value get_plus_row(const std::string& table, const Shape& table_shape, const std::string& row_source,
                     const Shape& row_source_shape, int64_t row);

  // nn.Linear weights [out_i, in] stacked on the output axis and stored transposed as one [in, sum(out_i)]
  // tensor named `name` (one MatMul instead of several: packed Q/K/V, gate+up). Conv1D weights ([in, out_i],
  // `conv1d`) are concatenated as they are.
  Value get_packed(const std::string& name, const std::vector<std::pair<std::string, int64_t>>& parts, int64_t in,
                   bool conv1d = false);
  // 1-D tensors concatenated (the biases of packed projections), named `name`.
  Value get_concat(const std::string& name, const std::vector<std::pair<std::string, int64_t>>& parts);

  // A 1-D tensor with 1 added to every element (Gemma's RMSNorm scales by 1 + weight), named `<name>+1`.
  Value get_plus_one(const std::string& full_name, const Shape& expected);

  // True when the tensor is present, float, of the expected shape and every value is 0 (then a bias of zeros
  // can be left out of the graph). False otherwise, without recording a problem: get() reports it.
  bool all_zero(const std::string& full_name, const Shape& expected) const;

  // Throws InputError listing every missing / mis-shaped tensor, naming the checkpoint files.
  void check() const;

 private:
  const TensorView* lookup(const std::string& name, const Shape& expected);
  TensorData as_f32(const TensorView& t) const;

  const WeightStore& store_;
  GraphBuilder& graph_;
  std::string prefix_;
  std::vector<std::string> missing_;
  std::vector<std::string> problems_;
};

}  // namespace trex
