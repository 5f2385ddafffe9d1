// Block-wise 4-bit weight quantization for com.microsoft.MatMulNBits, with a per-block search for the scale
// that minimizes the block's squared reconstruction error (better than round-to-nearest, which maps the
// block's extreme value exactly and wastes levels on outliers).
//
// Layout emitted (ONNX Runtime's MatMulNBits contract, bits = 4):
//   B            uint8 [N, k_blocks, block_size / 2]; column n's block kb holds w[kb*bs + j][n], element 2i in
//                the low nibble of byte i, element 2i+1 in the high nibble; a last partial block is padded
//                with the zero-point code
//   scales       float [N * k_blocks]
//   zero_points  asymmetric only: uint8 [N, ceil(k_blocks / 2)], block 2i in the low nibble of byte i;
//                symmetric weights leave it out (MatMulNBits' default zero point is 8)
//   w ≈ (code - zero_point) * scale
//
// Two quantizers produce these bytes: quantize_int4_reference (plain loops, one element at a time, the one to
// read) and quantize_int4 (contiguous block buffers, threads); tests/cpp/test_quantize_int4.cc checks that they
// agree bit for bit.
#pragma once

#include <cstdint>
#include <functional>
#include <optional>
#include <map>
#include <string>
#include <vector>

#include "graph/model.h"
#include "passes/quantize.h"

namespace trex {

struct Int4Params {
  int64_t block_size = 32;  // 16..256, a power of two
  bool symmetric = true;    // codes -8..7 around a fixed zero point of 8, else a zero point per block (the CLI's
                            // default is asymmetric)
  bool search = true;       // search the clipping per block; false: plain round-to-nearest (RTN)
  int clip_stride = 1;      // the search tries every clip_stride-th of the kInt4ClipSteps ratios (1: all 21;
                            // 4: 1.0, 0.94, ..., 0.7, a coarse search several times cheaper)
};

// Codes 0..15 and the per-block scale / zero point of one K×N weight, unpacked (tests and the error
// measurements read these; pack_int4 writes the MatMulNBits bytes).
struct Int4Weight {
  int64_t k = 0, n = 0, block_size = 32, k_blocks = 0;
  bool symmetric = true;
  std::vector<uint8_t> codes;       // [N, k_blocks * block_size], one code per byte, padding = zero point
  std::vector<float> scales;        // [N, k_blocks]
  std::vector<uint8_t> zero_points; // [N, k_blocks], 8 when symmetric
};

// The number of clipping ratios tried per block: 1.0, 0.985, ..., 0.7.
constexpr int kInt4ClipSteps = 21;

// Throws UsageError for an invalid block size.
void check_int4_params(const Int4Params& p);

// The scalar reference quantizer: `w` is K×N row-major. `importance` (K values, or nullptr for all ones) weighs
// each input channel's squared error in the search: the mean square of the activation that multiplies that row
// (calibration), so the search minimizes an estimate of the output error rather than the weight error.
// Returns false (out cleared) when `w` holds NaN or infinity.
bool quantize_int4_reference(const float* w, int64_t k, int64_t n, const Int4Params& p, Int4Weight* out,
                             const float* importance = nullptr);

// The fast quantizer, bit-identical to the reference. `w` is K×N row-major, or N×K when `transposed` (Gemm
// transB=1). `threads` 0 = hardware concurrency.
bool quantize_int4(const float* w, int64_t k, int64_t n, bool transposed, const Int4Params& p, Int4Weight* out,
                   int threads = 0, const float* importance = nullptr);

// The streamed quantizer: the N×K weight's rows (one output column's K values each) are read from `parts`
// (f32 / f16 / bf16 views [rows_i, K], in order, rows_i summing to N) one at a time, converted to f32 in a small
// buffer and quantized, the codes packed straight into `codes` (N·k_blocks·block_size/2 bytes, MatMulNBits' B),
// `scales` and `zero_points` (N·k_blocks each, unpacked; 8 when symmetric). No K×N float copy exists. Bit-identical
// to quantize_int4 (round-to-nearest has a one-pass kernel). False on NaN / infinity (outputs then partial).
bool quantize_int4_rows(const std::vector<TensorView>& parts, int64_t k, int64_t n, const Int4Params& p,
                        uint8_t* codes, float* scales, uint8_t* zero_points, int threads = 0);
// MatMulNBits' packed zero points [N, ceil(k_blocks/2)] from unpacked ones [N, k_blocks].
void pack_int4_zero_points(const uint8_t* zero_points, int64_t n, int64_t k_blocks, uint8_t* out);

// GPTQ-style quantization with error feedback: rows (input channels) are quantized in order and each row's
// rounding error is spread over the rows not yet quantized, weighted by the inverse of `gram` (K×K, the mean of
// x xᵀ over calibration activations), which minimizes the layer's output error ||X (W - Ŵ)||² rather than the
// weight error. Each block's scale comes from the clipping search on the block's updated weights (importance =
// diag(gram)). Deterministic (threads split the columns, which are independent). False on NaN / infinity.
bool quantize_int4_gptq(const float* w, int64_t k, int64_t n, bool transposed, const Int4Params& p,
                        const std::vector<double>& gram, Int4Weight* out, int threads = 0);

// The value that element (row, col) of the K×N weight stands for.
float dequantize_int4(const Int4Weight& q, int64_t row, int64_t col);

// MatMulNBits' B [N, k_blocks, block_size/2] and packed zero points [N, ceil(k_blocks/2)].
std::vector<uint8_t> pack_int4_codes(const Int4Weight& q);
std::vector<uint8_t> pack_int4_zero_points(const Int4Weight& q);

// Squared reconstruction error of one block of `len` values under (scale, zero point), each term times h[j]
// (nullptr: 1), summed in 8 lanes (lane = index % 8, lanes added in order) so that the fast quantizer can
// reproduce it exactly.
float int4_block_error(const float* x, int64_t len, float scale, int zero_point, const float* h = nullptr);

struct Int4Policy {
  Int4Params params;
  int64_t accuracy_level = 0;  // MatMulNBits accuracy_level attribute (0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8)
  std::vector<std::string> exclude_nodes;     // glob patterns over node and weight names
  std::vector<std::string> exclude_op_types;  // "MatMul", "Gemm"
  bool auto_policy = true;                    // keep fp32 weights below min_elements or min_channels
  int64_t min_elements = 1024;
  int64_t min_channels = 16;
  // Calibration: activation value name -> mean square per channel (K values), for the MatMuls it feeds.
  std::map<std::string, std::vector<float>> importance;
  // Calibration: activation value name -> mean x xᵀ (K×K); with it the weight is quantized by quantize_int4_gptq.
  std::map<std::string, std::vector<double>> gram;
  // Streamed: the codes, scales and zero points are computed when the model is written (one weight at a time,
  // its float values released right after), so a model quantized from a mapped checkpoint never holds more
  // than one weight in float; a weight holding NaN or infinity is then an InputError at write time instead of
  // a weight kept float. Importance and Gram matrices are ignored (data-free: clipping search or RTN).
  bool streamed = false;
  // Streamed: for a K×N weight named `name`, the same values stored N×K (e.g. the checkpoint's own [out, in]
  // rows behind trex's transposed `<name>.T`), or nullopt. Blocks run along K, so the N×K layout is read
  // contiguously, without transposing the weight there and back.
  std::function<std::optional<TensorData>(const std::string& name, const Shape& dims)> row_source;
};

// Rewrites MatMul (and Gemm with transA=0, alpha=beta=1) whose weight is a 2-D float initializer with
// K >= block_size into com.microsoft.MatMulNBits; a Gemm bias is added after. The bytes are produced when the
// model is written. The report's layer list uses the int8 pass's records.
Model quantize_int4_model(const Model& in, const Int4Policy& policy, QuantizeReport* report = nullptr);

// Relative Frobenius error of one weight under `p` (reference quantizer), for the accuracy fallback ranking.
double int4_weight_error(const Model& model, const std::string& weight, const Int4Params& p);

}  // namespace trex
