#include "runtime/ort_session.h"

#include <algorithm>
#include <thread>

#include <nlohmann/json.hpp>

#include "graph/graph_builder.h"
#include "util/error.h"

namespace trex {

namespace {
constexpr int64_t kMaxSampleElements = int64_t{1} << 28;
bool contains(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }
}  // namespace

namespace {
// ONNX Runtime's own log lines (several per failure, ANSI-coloured) never reach stderr: every failure also
// comes back as an Ort::Exception, which trex turns into its one-line error.
void drop_ort_log(void*, OrtLoggingLevel, const char*, const char*, const char*, const char*) {}
}  // namespace

int check_threads() { return static_cast<int>(std::clamp(std::thread::hardware_concurrency(), 1u, 4u)); }

Ort::Env& ort_env() {
  static Ort::Env env(ORT_LOGGING_LEVEL_FATAL, "trex", drop_ort_log, nullptr);
  return env;
}

std::vector<std::string> input_names(const Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> names;
  for (size_t i = 0; i < s.GetInputCount(); ++i) names.push_back(s.GetInputNameAllocated(i, alloc).get());
  return names;
}

std::vector<std::string> output_names(const Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  std::vector<std::string> names;
  for (size_t i = 0; i < s.GetOutputCount(); ++i) names.push_back(s.GetOutputNameAllocated(i, alloc).get());
  return names;
}

int64_t SampleShape::symbol(const std::string& name, size_t axis) const {
  if (name == "batch_size") return batch;
  if (name == "sequence_length") return seq;
  if (name == "past_sequence_length") return past;
  if (name == "total_sequence_length") return past + seq;
  if (name == "encoder_sequence_length") return encoder < 0 ? seq : encoder;
  if (name == "past_encoder_sequence_length") return past == 0 ? 0 : (encoder < 0 ? seq : encoder);
  // Encoder-decoders' present cross-attention K/V: projected on the first step, empty on the steps with a cache.
  if (name == "present_encoder_sequence_length") return past == 0 ? (encoder < 0 ? seq : encoder) : 0;
  return axis == 0 ? batch : seq;
}

namespace {

// The declarations stored by trex (name → {"sample": ..., ...}); empty for other exporters' models.
nlohmann::json declarations(const Ort::Session& s) {
  Ort::AllocatorWithDefaultOptions alloc;
  Ort::ModelMetadata md = s.GetModelMetadata();
  auto v = md.LookupCustomMetadataMapAllocated(kInputsMetadataKey, alloc);
  if (!v) return nlohmann::json::object();
  nlohmann::json j = nlohmann::json::parse(v.get(), nullptr, /*allow_exceptions=*/false);
  return j.is_object() ? j : nlohmann::json::object();
}

InputSample::Kind kind_of(const nlohmann::json& decl, const std::string& name) {
  const std::string k = decl.is_object() ? decl.value("sample", "") : "";
  if (k == "ids") return InputSample::kIds;
  if (k == "mask") return InputSample::kMask;
  if (k == "positions") return InputSample::kPositions;
  if (k == "state") return InputSample::kState;
  if (k == "cache_flag") return InputSample::kCacheFlag;
  // Not declared: guess from the name (models written by other exporters).
  if (contains(name, "mask")) return InputSample::kMask;
  if (contains(name, "position")) return InputSample::kPositions;
  if (contains(name, "past")) return InputSample::kState;
  return InputSample::kIds;
}

}  // namespace

bool has_state_inputs(const Ort::Session& s) {
  const nlohmann::json decl = declarations(s);
  for (const auto& n : input_names(s))
    if (decl.contains(n) && kind_of(decl[n], n) == InputSample::kState) return true;
  return false;
}

SampleInputs make_sample_inputs(const Ort::Session& s, int64_t batch, int64_t seq,
                                const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                                const std::string& model) {
  return make_step_inputs(s, SampleShape{batch, seq, 0, true}, limits, rng, model);
}

SampleInputs make_step_inputs(const Ort::Session& s, const SampleShape& shape_sizes,
                              const std::map<std::string, int64_t>& limits, std::mt19937_64& rng,
                              const std::string& model, const SampleInputs* previous,
                              const std::map<std::string, const Ort::Value*>* previous_outputs) {
  SampleInputs feed;
  feed.names = input_names(s);
  const nlohmann::json decl = declarations(s);
  // Reserve so that the buffers the Ort::Values point into never move.
  feed.i64.reserve(feed.names.size());
  feed.i32.reserve(feed.names.size());
  feed.f32.reserve(feed.names.size());
  Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  auto previous_ints = [&](const std::string& name) -> const std::vector<int64_t>* {
    if (!previous) return nullptr;
    auto it = previous->i64_index.find(name);
    return it == previous->i64_index.end() ? nullptr : &previous->i64[it->second];
  };
  // The mask of this step (ones/padding), kept for deriving position ids.
  std::vector<int64_t> mask;
  int64_t mask_len = 0;

  // Masks first: position ids are derived from them.
  std::vector<size_t> order(feed.names.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_partition(order.begin(), order.end(), [&](size_t i) {
    return kind_of(decl.value(feed.names[i], nlohmann::json()), feed.names[i]) == InputSample::kMask;
  });
  std::vector<Ort::Value> values(feed.names.size());
  for (size_t i : order) {
    Ort::TypeInfo type_info = s.GetInputTypeInfo(i);  // keep alive while its shape view is used
    auto info = type_info.GetTensorTypeAndShapeInfo();
    std::vector<int64_t> shape = info.GetShape();
    std::vector<const char*> symbols(shape.size(), nullptr);
    info.GetSymbolicDimensions(symbols.data(), symbols.size());
    for (size_t d = 0; d < shape.size(); ++d)
      if (shape[d] < 0) shape[d] = shape_sizes.symbol(symbols[d] ? symbols[d] : "", d);
    const std::string& name = feed.names[i];
    // Static dims come from the model file: checked, so a hostile [2^40, 2^40] input cannot wrap or exhaust memory.
    int64_t count = 1;
    for (auto d : shape) {
      if (d < 0 || __builtin_mul_overflow(count, d, &count) || count > kMaxSampleElements) {
        throw InputError(model, "input '" + name + "' has a shape too large to feed sample data (more than " +
                                    std::to_string(kMaxSampleElements) + " elements)");
      }
    }
    const nlohmann::json d = decl.value(name, nlohmann::json());
    const InputSample::Kind kind = kind_of(d, name);
    const auto type = info.GetElementType();
    std::vector<int64_t> ints(static_cast<size_t>(count), 0);
    std::vector<float> floats;
    if (kind == InputSample::kMask) {
      std::fill(ints.begin(), ints.end(), 1);
      const int64_t rows = shape.empty() ? 1 : shape[0], cols = shape.size() == 2 ? shape[1] : count;
      const std::vector<int64_t>* prev = previous_ints(name);
      if (prev && shape.size() == 2 && !prev->empty() && static_cast<int64_t>(prev->size()) % rows == 0) {
        // Next step: the previous mask, extended by ones for the new tokens.
        const int64_t prev_cols = static_cast<int64_t>(prev->size()) / rows;
        for (int64_t r = 0; r < rows; ++r)
          for (int64_t c = 0; c < std::min(prev_cols, cols); ++c)
            ints[static_cast<size_t>(r * cols + c)] = (*prev)[static_cast<size_t>(r * prev_cols + c)];
      } else if (shape.size() == 2 && rows > 1 && shape_sizes.padded) {
        // Pad half of the last row: on the left for decoders (as generate() pads prompts), else on the right.
        const bool left = d.is_object() && d.value("padding", "") == "left";
        for (int64_t j = 0; j < cols / 2; ++j)
          ints[static_cast<size_t>((rows - 1) * cols + (left ? j : cols - 1 - j))] = 0;
      }
      mask = ints;
      mask_len = cols;
    } else if (kind == InputSample::kPositions) {
      const int64_t rows = shape.empty() ? 1 : shape[0], last = shape.empty() ? 1 : shape.back();
      if (!mask.empty() && mask_len >= last && static_cast<int64_t>(mask.size()) == rows * mask_len) {
        // transformers: cumsum(mask) - 1, padding positions set to 1; the last `last` columns.
        for (int64_t r = 0; r < rows; ++r) {
          int64_t run = 0;
          for (int64_t c = 0; c < mask_len; ++c) {
            const int64_t m = mask[static_cast<size_t>(r * mask_len + c)];
            run += m;
            const int64_t col = c - (mask_len - last);
            if (col >= 0) ints[static_cast<size_t>(r * last + col)] = m ? run - 1 : 1;
          }
        }
      } else {
        for (int64_t j = 0; j < count; ++j) ints[static_cast<size_t>(j)] = shape_sizes.past + j % last;
      }
    } else if (kind == InputSample::kState) {
      const std::string fed_by = d.is_object() ? d.value("fed_by", "") : "";
      const Ort::Value* prev = nullptr;
      if (previous_outputs && !fed_by.empty()) {
        auto it = previous_outputs->find(fed_by);
        if (it != previous_outputs->end()) prev = it->second;
      }
      if (prev) {
        auto pinfo = prev->GetTensorTypeAndShapeInfo();
        shape = pinfo.GetShape();
        const float* p = prev->GetTensorData<float>();
        floats.assign(p, p + pinfo.GetElementCount());
      } else {
        std::normal_distribution<float> dist;
        floats.resize(static_cast<size_t>(count));
        for (auto& v : floats) v = dist(rng);
      }
    } else {
      auto it = limits.find(name);
      int64_t limit = it != limits.end() ? it->second : (contains(name, "ids") ? 100 : 1);
      if (d.is_object() && d.contains("limit") && d["limit"].is_number_integer() && it == limits.end())
        limit = d["limit"].get<int64_t>();
      std::uniform_int_distribution<int64_t> dist(0, std::max<int64_t>(limit, 1) - 1);
      for (auto& v : ints) v = dist(rng);
    }
    if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64) {
      feed.i64_index[name] = feed.i64.size();
      feed.i64.push_back(std::move(ints));
      values[i] = Ort::Value::CreateTensor<int64_t>(mem, feed.i64.back().data(), feed.i64.back().size(), shape.data(),
                                                    shape.size());
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32) {
      feed.i32.emplace_back(ints.begin(), ints.end());
      values[i] = Ort::Value::CreateTensor<int32_t>(mem, feed.i32.back().data(), feed.i32.back().size(), shape.data(),
                                                    shape.size());
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL && kind == InputSample::kCacheFlag) {
      feed.flags.emplace_back(new bool[static_cast<size_t>(count)]);
      std::fill(feed.flags.back().get(), feed.flags.back().get() + count, shape_sizes.past > 0);
      values[i] = Ort::Value::CreateTensor<bool>(mem, feed.flags.back().get(), static_cast<size_t>(count), shape.data(),
                                                 shape.size());
    } else if (type == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) {
      if (floats.empty() && count > 0) {
        std::normal_distribution<float> dist;
        floats.resize(static_cast<size_t>(count));
        for (auto& v : floats) v = dist(rng);
      }
      feed.f32.push_back(std::move(floats));
      values[i] = Ort::Value::CreateTensor<float>(mem, feed.f32.back().data(), feed.f32.back().size(), shape.data(),
                                                  shape.size());
    } else {
      throw VerificationError(model + ": input '" + name + "' has an element type the sample inputs cannot feed");
    }
  }
  for (auto& v : values) feed.values.push_back(std::move(v));
  return feed;
}

}  // namespace trex
