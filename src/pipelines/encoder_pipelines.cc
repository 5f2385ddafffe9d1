// The encoder pipelines of `trex run`: feature-extraction (with sentence-transformers' pooling and normalization
// when the folder has modules.json), text-classification, token-classification, question-answering and fill-mask.
// Each gives what transformers' pipeline() gives for the same folder (same keys, same post-processing); the model
// runs through one ONNX Runtime session, on length-sorted batches padded only to the longest row of each batch.
#include <onnxruntime_cxx_api.h>
#include <unicode/unistr.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <memory>
#include <numeric>
#include <optional>
#include <string>
#include <vector>

#include "arch/architecture.h"
#include "io/json_file.h"
#include "io/safe_open.h"
#include "pipelines/pipeline.h"
#include "runtime/ort_session.h"
#include "tokenizers/tokenizer.h"
#include "util/error.h"

namespace trex::pipelines {

namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using tokenizers::Encoding;
using tokenizers::OffsetUnit;
using tokenizers::Tokenizer;

constexpr uint64_t kMaxTokenizerBytes = uint64_t{256} << 20;
// Largest model output (floats) one batch may produce: batches of long rows over a large vocabulary are split.
constexpr int64_t kMaxBatchOutputFloats = int64_t{64} << 20;

// ---- UTF-8 (offsets are in characters, as Python's str indexes them) ----

// Byte offset of every character of `s`, plus s.size() at the end.
std::vector<size_t> char_starts(const std::string& s) {
  std::vector<size_t> out;
  out.reserve(s.size() + 1);
  for (size_t i = 0; i < s.size(); ++i)
    if ((static_cast<unsigned char>(s[i]) & 0xC0) != 0x80) out.push_back(i);
  out.push_back(s.size());
  return out;
}

size_t char_count(const std::string& s) { return char_starts(s).size() - 1; }

// s[begin:end] in characters (clamped).
std::string char_slice(const std::string& s, const std::vector<size_t>& starts, size_t begin, size_t end) {
  const size_t n = starts.size() - 1;
  begin = std::min(begin, n);
  end = std::min(std::max(end, begin), n);
  return s.substr(starts[begin], starts[end] - starts[begin]);
}

// ---- the folder: config.json, tokenizer files ----

json read_optional_json(const fs::path& path) {
  std::error_code ec;
  if (!fs::exists(path, ec)) return json();
  return read_json_file(path);
}

std::string token_string(const json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

struct Folder {
  fs::path dir;
  json config;
  json tokenizer_config;
  json tokenizer_json;
  std::unique_ptr<Tokenizer> tok;
  size_t max_length = 0;  // longest input the model takes (tokens); 0: no limit known
  bool truncation_left = false;
  int64_t pad_id = 0, cls_id = -1, mask_id = -1, unk_id = -1;
  std::string mask_token;
  bool wordpiece_prefix = false;  // the tokenizer model has a continuing-subword prefix (WordPiece)
};

int64_t special_id(const Folder& f, const char* key) {
  std::string t = token_string(f.tokenizer_config.is_object() ? f.tokenizer_config.value(key, json()) : json());
  if (t.empty()) return -1;
  const auto id = f.tok->token_to_id(t);
  return id ? *id : -1;
}

Folder load_folder(const fs::path& dir) {
  Folder f;
  f.dir = dir;
  if (!fs::is_directory(dir)) throw InputError(dir.string(), "not a folder (trex run takes the folder trex export wrote)");
  f.config = read_json_file(dir / "config.json");
  if (!f.config.is_object()) throw InputError((dir / "config.json").string(), "not a JSON object");
  const fs::path tok_path = dir / "tokenizer.json";
  std::error_code ec;
  if (!fs::exists(tok_path, ec))
    throw InputError(tok_path.string(), "missing: trex run needs the tokenizer files (trex export copies them from a "
                                        "checkpoint that has a tokenizer.json)");
  const std::string text = open_regular_file_in(dir, tok_path, kMaxTokenizerBytes, "tokenizer.json").read_all();
  f.tok = std::make_unique<Tokenizer>(Tokenizer::from_json(text, tok_path.string()));
  f.tokenizer_json = parse_json_bounded(text, tok_path.string(), "invalid JSON", size_t{1} << 24);
  f.tokenizer_config = read_optional_json(dir / "tokenizer_config.json");
  if (!f.tokenizer_config.is_object()) f.tokenizer_config = json::object();
  const json special_map = read_optional_json(dir / "special_tokens_map.json");
  if (special_map.is_object())  // transformers merges special_tokens_map.json under tokenizer_config.json's keys
    for (auto it = special_map.begin(); it != special_map.end(); ++it)
      if (!f.tokenizer_config.contains(it.key())) f.tokenizer_config[it.key()] = it.value();

  // The longest input: the tokenizer's model_max_length (absent or "very large" in transformers: none), capped by
  // the position table (RoBERTa-like models count their positions from pad_token_id + 1).
  int64_t limit = 0;
  const json& mml = f.tokenizer_config.value("model_max_length", json());
  if (mml.is_number() && mml.get<double>() > 0 && mml.get<double>() < 1e12) limit = static_cast<int64_t>(mml.get<double>());
  int64_t positions = f.config.value("max_position_embeddings", int64_t{0});
  const std::string model_type = f.config.value("model_type", "");
  if (positions > 0 && (model_type == "roberta" || model_type == "xlm-roberta" || model_type == "camembert"))
    positions -= f.config.value("pad_token_id", int64_t{1}) + 1;
  if (positions > 0) limit = limit > 0 ? std::min(limit, positions) : positions;
  f.max_length = static_cast<size_t>(std::max<int64_t>(0, limit));
  f.truncation_left = f.tokenizer_config.value("truncation_side", "right") == "left";
  f.tok->disable_padding();
  f.tok->set_truncation(f.max_length, f.truncation_left);

  f.pad_id = special_id(f, "pad_token");
  if (f.pad_id < 0) f.pad_id = std::max<int64_t>(0, f.config.value("pad_token_id", int64_t{0}));
  f.cls_id = special_id(f, "cls_token");
  f.mask_id = special_id(f, "mask_token");
  f.unk_id = special_id(f, "unk_token");
  f.mask_token = token_string(f.tokenizer_config.value("mask_token", json()));
  const json& model = f.tokenizer_json.value("model", json::object());
  const json& prefix = model.is_object() ? model.value("continuing_subword_prefix", json()) : json();
  f.wordpiece_prefix = prefix.is_string() && !prefix.get<std::string>().empty();
  return f;
}

// ---- the model ----

struct Tensor {
  std::vector<int64_t> shape;  // without the batch axis
  std::vector<float> data;
};
using RowOutputs = std::map<std::string, Tensor>;

class Model {
 public:
  Model(const fs::path& dir, const RunOptions& o) : batch_size_(std::max(1, o.batch_size)) {
    const std::string name = o.model_file.empty() ? "model.onnx" : o.model_file;
    if (name.find('/') != std::string::npos || name == "." || name == "..")
      throw UsageError("--model-file takes the name of a file in the folder, not a path: '" + name + "'");
    const fs::path file = dir / name;
    std::error_code ec;
    if (!fs::is_regular_file(file, ec)) throw InputError(file.string(), "missing (trex run takes the folder trex export wrote)");
    if (!real_path_inside(dir, file)) throw InputError(file.string(), "lies outside the model folder (symlink)");
    Ort::SessionOptions so;
    if (o.threads > 0) so.SetIntraOpNumThreads(o.threads);
    so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
    try {
      session_ = std::make_unique<Ort::Session>(ort_env(), file.c_str(), so);
    } catch (const Ort::Exception& e) {
      throw InputError(file.string(), std::string("ONNX Runtime cannot load it: ") + e.what());
    }
    inputs_ = input_names(*session_);
    outputs_ = output_names(*session_);
    for (const auto& n : inputs_)
      if (n != "input_ids" && n != "attention_mask" && n != "token_type_ids")
        throw InputError(file.string(), "unexpected model input '" + n + "' (not an encoder trex exported?)");
    // Floats per token of the widest output (the vocabulary of a masked LM), to size batches.
    for (size_t i = 0; i < outputs_.size(); ++i) {
      auto shape = session_->GetOutputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
      if (!shape.empty() && shape.back() > 0) per_token_ = std::max(per_token_, shape.back());
    }
  }

  bool has_output(const std::string& name) const {
    return std::find(outputs_.begin(), outputs_.end(), name) != outputs_.end();
  }

  // Runs every encoding (length-sorted batches) and returns each row's outputs with the padding cut away.
  std::vector<RowOutputs> forward(const std::vector<const Encoding*>& rows, int64_t pad_id) {
    std::vector<size_t> order(rows.size());
    std::iota(order.begin(), order.end(), size_t{0});
    std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rows[a]->ids.size() < rows[b]->ids.size(); });
    std::vector<RowOutputs> out(rows.size());
    size_t begin = 0;
    while (begin < order.size()) {
      // Rows come shortest first, so the batch's length is its last row's.
      size_t end = std::min(order.size(), begin + static_cast<size_t>(batch_size_));
      while (end > begin + 1 &&
             static_cast<int64_t>(end - begin) * static_cast<int64_t>(rows[order[end - 1]]->ids.size()) * per_token_ >
                 kMaxBatchOutputFloats)
        --end;
      run_batch(rows, std::vector<size_t>(order.begin() + static_cast<std::ptrdiff_t>(begin),
                                          order.begin() + static_cast<std::ptrdiff_t>(end)),
                pad_id, out);
      begin = end;
    }
    return out;
  }

 private:
  void run_batch(const std::vector<const Encoding*>& rows, const std::vector<size_t>& batch, int64_t pad_id,
                 std::vector<RowOutputs>& out) {
    const int64_t b = static_cast<int64_t>(batch.size());
    int64_t s = 1;
    for (size_t r : batch) s = std::max<int64_t>(s, static_cast<int64_t>(rows[r]->ids.size()));
    std::vector<int64_t> ids(static_cast<size_t>(b * s), pad_id), mask(static_cast<size_t>(b * s), 0),
        types(static_cast<size_t>(b * s), 0);
    for (int64_t i = 0; i < b; ++i) {
      const Encoding& e = *rows[batch[static_cast<size_t>(i)]];
      for (size_t t = 0; t < e.ids.size(); ++t) {
        const size_t k = static_cast<size_t>(i * s) + t;
        ids[k] = e.ids[t];
        mask[k] = 1;
        types[k] = t < e.type_ids.size() ? e.type_ids[t] : 0;
      }
    }
    Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const int64_t shape[2] = {b, s};
    std::vector<Ort::Value> values;
    std::vector<const char*> in_names, out_names;
    for (const auto& n : inputs_) {
      std::vector<int64_t>& buf = n == "input_ids" ? ids : n == "attention_mask" ? mask : types;
      values.push_back(Ort::Value::CreateTensor<int64_t>(mem, buf.data(), buf.size(), shape, 2));
      in_names.push_back(n.c_str());
    }
    for (const auto& n : outputs_) out_names.push_back(n.c_str());
    std::vector<Ort::Value> results;
    try {
      results = session_->Run(Ort::RunOptions{nullptr}, in_names.data(), values.data(), values.size(), out_names.data(),
                              out_names.size());
    } catch (const Ort::Exception& e) {
      throw InputError(std::string("ONNX Runtime failed to run the model: ") + e.what());
    }
    for (size_t k = 0; k < results.size(); ++k) {
      auto info = results[k].GetTensorTypeAndShapeInfo();
      if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) continue;
      const std::vector<int64_t> dims = info.GetShape();
      if (dims.empty() || dims[0] != b) continue;
      const float* data = results[k].GetTensorData<float>();
      int64_t per_row = 1;
      for (size_t d = 1; d < dims.size(); ++d) per_row *= dims[d];
      // Axis 1 is the sequence for [B, S, ...] outputs and for the QA logits [B, S].
      const bool per_token = dims.size() >= 3 || (dims.size() == 2 && outputs_[k].find("_logits") != std::string::npos);
      for (int64_t i = 0; i < b; ++i) {
        const size_t r = batch[static_cast<size_t>(i)];
        Tensor t;
        t.shape.assign(dims.begin() + 1, dims.end());
        const float* row = data + i * per_row;
        if (per_token) {
          const int64_t len = static_cast<int64_t>(rows[r]->ids.size());
          t.shape[0] = len;
          t.data.assign(row, row + per_row / dims[1] * len);
        } else {
          t.data.assign(row, row + per_row);
        }
        out[r][outputs_[k]] = std::move(t);
      }
    }
  }

  int batch_size_;
  int64_t per_token_ = 1;
  std::unique_ptr<Ort::Session> session_;
  std::vector<std::string> inputs_, outputs_;
};

const Tensor& output(const RowOutputs& r, const std::string& name) {
  auto it = r.find(name);
  if (it == r.end()) throw InputError("model.onnx: no `" + name + "` output (exported for another pipeline?)");
  return it->second;
}

// Softmax of n floats, computed as numpy does it for the pipelines (shift by the max).
std::vector<double> softmax(const float* x, size_t n) {
  std::vector<double> p(n);
  double m = -std::numeric_limits<double>::infinity();
  for (size_t i = 0; i < n; ++i) m = std::max(m, static_cast<double>(x[i]));
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp(static_cast<double>(x[i]) - m);
  for (auto& v : p) v /= sum;
  return p;
}

std::string label_of(const json& config, size_t i) {
  const json& m = config.value("id2label", json::object());
  const std::string key = std::to_string(i);
  if (m.is_object() && m.contains(key) && m[key].is_string()) return m[key].get<std::string>();
  return "LABEL_" + key;
}

size_t argmax(const std::vector<double>& v) {
  return static_cast<size_t>(std::max_element(v.begin(), v.end()) - v.begin());
}

class EncoderPipeline : public Pipeline {
 public:
  EncoderPipeline(const fs::path& dir, std::string task, const RunOptions& o)
      : task_(std::move(task)), o_(o), f_(load_folder(dir)), model_(dir, o) {}
  const std::string& task() const override { return task_; }
  size_t inputs_per_call(size_t batch_size) const override { return batch_size * 64; }

 protected:
  std::vector<RowOutputs> forward(const std::vector<Encoding>& encs) {
    std::vector<const Encoding*> rows;
    for (const auto& e : encs) rows.push_back(&e);
    return model_.forward(rows, f_.pad_id);
  }

  std::string task_;
  RunOptions o_;
  Folder f_;
  Model model_;
};

// ---- feature-extraction ----

struct SentenceTransformer {
  bool cls = false, mean = false, max = false, mean_sqrt = false, last = false;
  bool normalize = false;
  size_t max_seq_length = 0;
};

std::optional<SentenceTransformer> sentence_transformer(const Folder& f) {
  const json modules = read_optional_json(f.dir / "modules.json");
  if (modules.is_null()) return std::nullopt;
  const std::string file = (f.dir / "modules.json").string();
  if (!modules.is_array()) throw InputError(file, "not a JSON array");
  SentenceTransformer st;
  bool pooling = false;
  for (const auto& m : modules) {
    const std::string type = m.is_object() ? m.value("type", "") : "";
    const std::string path = m.is_object() ? m.value("path", "") : "";
    if (type == "sentence_transformers.models.Transformer") continue;
    if (type == "sentence_transformers.models.Normalize") {
      st.normalize = true;
      continue;
    }
    if (type != "sentence_transformers.models.Pooling")
      throw InputError(file, "module type '" + clip_for_message(type) + "' is not supported by trex run");
    if (path.empty() || path.find("..") != std::string::npos || path[0] == '/')
      throw InputError(file, "bad Pooling path '" + clip_for_message(path) + "'");
    const fs::path cfg_path = f.dir / path / "config.json";
    const json c = read_json_file(cfg_path);
    if (!c.is_object()) throw InputError(cfg_path.string(), "not a JSON object");
    auto flag = [&](const char* k) { return c.contains(k) && c[k].is_boolean() && c[k].get<bool>(); };
    std::string mode = c.value("pooling_mode", "");
    st.cls = flag("pooling_mode_cls_token") || mode == "cls";
    st.max = flag("pooling_mode_max_tokens") || mode == "max";
    st.mean = flag("pooling_mode_mean_tokens") || mode == "mean";
    st.mean_sqrt = flag("pooling_mode_mean_sqrt_len_tokens");
    st.last = flag("pooling_mode_lasttoken") || mode == "lasttoken";
    if (flag("pooling_mode_weightedmean_tokens") || mode == "weightedmean")
      throw InputError(cfg_path.string(), "weighted-mean pooling is not supported by trex run");
    if (!(st.cls || st.max || st.mean || st.mean_sqrt || st.last))
      throw InputError(cfg_path.string(), "no pooling mode set");
    pooling = true;
  }
  if (!pooling) throw InputError(file, "no sentence_transformers.models.Pooling module");
  const json sb = read_optional_json(f.dir / "sentence_bert_config.json");
  if (sb.is_object()) {
    if (sb.value("do_lower_case", false))
      throw InputError((f.dir / "sentence_bert_config.json").string(), "do_lower_case is not supported by trex run");
    const json& m = sb.value("max_seq_length", json());
    if (m.is_number_integer() && m.get<int64_t>() > 0) st.max_seq_length = static_cast<size_t>(m.get<int64_t>());
  }
  return st;
}

// Python's str.strip() for the whitespace sentence-transformers strips (ASCII and the common Unicode spaces).
std::string strip(const std::string& s) {
  static const char* const spaces[] = {" ", "\t", "\n", "\r", "\v", "\f", "\xC2\x85", "\xC2\xA0", "\xE1\x9A\x80",
                                       "\xE2\x80\x80", "\xE2\x80\x81", "\xE2\x80\x82", "\xE2\x80\x83", "\xE2\x80\x84",
                                       "\xE2\x80\x85", "\xE2\x80\x86", "\xE2\x80\x87", "\xE2\x80\x88", "\xE2\x80\x89",
                                       "\xE2\x80\x8A", "\xE2\x80\xA8", "\xE2\x80\xA9", "\xE2\x80\xAF", "\xE2\x81\x9F",
                                       "\xE3\x80\x80", "\x1C", "\x1D", "\x1E", "\x1F"};
  size_t b = 0, e = s.size();
  auto space_at = [&](size_t pos, bool front) -> size_t {
    for (const char* sp : spaces) {
      const size_t n = std::char_traits<char>::length(sp);
      if (front ? (pos + n <= e && s.compare(pos, n, sp) == 0) : (pos >= b + n && s.compare(pos - n, n, sp) == 0)) return n;
    }
    return 0;
  };
  for (size_t n; (n = space_at(b, true)) > 0;) b += n;
  for (size_t n; (n = space_at(e, false)) > 0;) e -= n;
  return s.substr(b, e - b);
}

class FeatureExtraction : public EncoderPipeline {
 public:
  FeatureExtraction(const fs::path& dir, std::string task, const RunOptions& o) : EncoderPipeline(dir, std::move(task), o) {
    st_ = sentence_transformer(f_);
    if (st_ && st_->max_seq_length > 0)
      f_.tok->set_truncation(f_.max_length > 0 ? std::min(f_.max_length, st_->max_seq_length) : st_->max_seq_length,
                             f_.truncation_left);
  }

  std::vector<json> run(const std::vector<std::string>& inputs) override {
    std::vector<Encoding> encs;
    for (const auto& text : inputs) encs.push_back(f_.tok->encode(st_ ? strip(text) : text));
    const auto outs = forward(encs);
    std::vector<json> answers;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& h = output(outs[i], "last_hidden_state");
      const size_t len = static_cast<size_t>(h.shape[0]), hidden = static_cast<size_t>(h.shape.back());
      if (!st_) {  // transformers' feature-extraction: [1][tokens][hidden]
        json rows = json::array();
        for (size_t t = 0; t < len; ++t)
          rows.push_back(std::vector<float>(h.data.begin() + static_cast<std::ptrdiff_t>(t * hidden),
                                            h.data.begin() + static_cast<std::ptrdiff_t>((t + 1) * hidden)));
        answers.push_back(json::array({rows}));
        continue;
      }
      answers.push_back(pool(h.data, len, hidden));
    }
    return answers;
  }

 private:
  // sentence-transformers' Pooling (modes concatenated in its order: cls, max, mean, mean_sqrt_len, lasttoken),
  // then Normalize. The rows carry no padding, so every token counts.
  json pool(const std::vector<float>& h, size_t len, size_t hidden) const {
    std::vector<double> v;
    const size_t n = std::max<size_t>(len, 1);
    if (st_->cls) for (size_t d = 0; d < hidden; ++d) v.push_back(len ? h[d] : 0.0);
    if (st_->max)
      for (size_t d = 0; d < hidden; ++d) {
        double m = -1e9;
        for (size_t t = 0; t < len; ++t) m = std::max(m, static_cast<double>(h[t * hidden + d]));
        v.push_back(m);
      }
    std::vector<double> sum(hidden, 0.0);
    for (size_t t = 0; t < len; ++t)
      for (size_t d = 0; d < hidden; ++d) sum[d] += h[t * hidden + d];
    if (st_->mean) for (size_t d = 0; d < hidden; ++d) v.push_back(sum[d] / static_cast<double>(n));
    if (st_->mean_sqrt) for (size_t d = 0; d < hidden; ++d) v.push_back(sum[d] / std::sqrt(static_cast<double>(n)));
    if (st_->last) for (size_t d = 0; d < hidden; ++d) v.push_back(len ? h[(len - 1) * hidden + d] : 0.0);
    if (st_->normalize) {
      double norm = 0;
      for (double x : v) norm += x * x;
      norm = std::max(std::sqrt(norm), 1e-12);
      for (double& x : v) x /= norm;
    }
    std::vector<float> out(v.begin(), v.end());
    return out;
  }

  std::optional<SentenceTransformer> st_;
};

// ---- text-classification ----

class TextClassification : public EncoderPipeline {
 public:
  TextClassification(const fs::path& dir, std::string task, const RunOptions& o) : EncoderPipeline(dir, std::move(task), o) {
    fn_ = o.function_to_apply;
    if (fn_.empty()) {  // transformers' choice
      const std::string problem = f_.config.value("problem_type", "");
      const json& labels = f_.config.value("id2label", json::object());
      const size_t n = labels.is_object() && !labels.empty() ? labels.size()
                                                             : static_cast<size_t>(f_.config.value("num_labels", 2));
      if (problem == "multi_label_classification" || n == 1) fn_ = "sigmoid";
      else if (problem == "single_label_classification" || n > 1) fn_ = "softmax";
      else fn_ = "none";
    }
  }

  std::vector<json> run(const std::vector<std::string>& inputs) override {
    std::vector<Encoding> encs;
    for (const auto& text : inputs) encs.push_back(f_.tok->encode(text));
    const auto outs = forward(encs);
    std::vector<json> answers;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& logits = output(outs[i], "logits");
      const size_t n = logits.data.size();
      std::vector<double> scores(n);
      if (fn_ == "softmax") scores = softmax(logits.data.data(), n);
      else
        for (size_t k = 0; k < n; ++k)
          scores[k] = fn_ == "sigmoid" ? 1.0 / (1.0 + std::exp(-static_cast<double>(logits.data[k]))) : logits.data[k];
      if (o_.top_k < 0) {  // transformers' legacy answer: the best label
        const size_t k = argmax(scores);
        answers.push_back({{"label", label_of(f_.config, k)}, {"score", scores[k]}});
        continue;
      }
      std::vector<size_t> order(n);
      std::iota(order.begin(), order.end(), size_t{0});
      std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] > scores[b]; });
      const size_t k = o_.top_k == 0 ? n : std::min(n, static_cast<size_t>(o_.top_k));
      json list = json::array();
      for (size_t r = 0; r < k; ++r) list.push_back({{"label", label_of(f_.config, order[r])}, {"score", scores[order[r]]}});
      answers.push_back(list);
    }
    return answers;
  }

 private:
  std::string fn_;
};

// ---- token-classification ----

struct PreEntity {
  std::string word;
  std::vector<double> scores;
  size_t start = 0, end = 0;
  size_t index = 0;
  bool is_subword = false;
};

struct Entity {
  std::string entity;
  double score = 0;
  size_t index = 0;
  std::string word;
  size_t start = 0, end = 0;
};

class TokenClassification : public EncoderPipeline {
 public:
  TokenClassification(const fs::path& dir, std::string task, const RunOptions& o)
      : EncoderPipeline(dir, std::move(task), o), strategy_(o.aggregation_strategy.empty() ? "none" : o.aggregation_strategy) {
    if (strategy_ != "none" && strategy_ != "simple" && strategy_ != "first" && strategy_ != "average" && strategy_ != "max")
      throw UsageError("unknown aggregation strategy '" + strategy_ + "' (none, simple, first, average, max)");
  }

  std::vector<json> run(const std::vector<std::string>& inputs) override {
    std::vector<Encoding> encs;
    for (const auto& text : inputs) encs.push_back(f_.tok->encode(text, true, OffsetUnit::kChar));
    const auto outs = forward(encs);
    std::vector<json> answers;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Tensor& logits = output(outs[i], "logits");
      const std::vector<PreEntity> pre = gather(inputs[i], encs[i], logits);
      json list = json::array();
      for (const auto& e : aggregate(pre)) {
        if (e.entity == "O") continue;
        if (strategy_ == "none")
          list.push_back({{"entity", e.entity}, {"score", e.score}, {"index", e.index}, {"word", e.word},
                          {"start", e.start}, {"end", e.end}});
        else
          list.push_back({{"entity_group", e.entity}, {"score", e.score}, {"word", e.word}, {"start", e.start}, {"end", e.end}});
      }
      answers.push_back(list);
    }
    return answers;
  }

 private:
  std::vector<PreEntity> gather(const std::string& sentence, const Encoding& e, const Tensor& logits) const {
    const std::vector<size_t> starts = char_starts(sentence);
    const size_t labels = static_cast<size_t>(logits.shape.back());
    std::vector<PreEntity> out;
    for (size_t t = 0; t < e.ids.size(); ++t) {
      if (e.special_tokens_mask[t]) continue;
      PreEntity p;
      p.word = f_.tok->id_to_token(e.ids[t]);
      p.start = e.offsets[t].first;
      p.end = e.offsets[t].second;
      p.index = t;
      p.scores = softmax(logits.data.data() + t * labels, labels);
      const std::string word_ref = char_slice(sentence, starts, p.start, p.end);
      if (f_.wordpiece_prefix) {
        p.is_subword = char_count(p.word) != char_count(word_ref);
      } else {  // transformers' heuristic: no space before the token
        const std::string around = p.start > 0 ? char_slice(sentence, starts, p.start - 1, p.start + 1) : std::string(" ");
        p.is_subword = p.start > 0 && around.find(' ') == std::string::npos;
      }
      if (e.ids[t] == f_.unk_id) {
        p.word = word_ref;
        p.is_subword = false;
      }
      out.push_back(std::move(p));
    }
    return out;
  }

  Entity aggregate_word(const std::vector<const PreEntity*>& group) const {
    std::vector<std::string> tokens;
    for (const auto* p : group) tokens.push_back(p->word);
    Entity e;
    e.word = f_.tok->tokens_to_string(tokens);
    e.start = group.front()->start;
    e.end = group.back()->end;
    if (strategy_ == "first") {
      const size_t k = argmax(group.front()->scores);
      e.entity = label_of(f_.config, k);
      e.score = group.front()->scores[k];
    } else if (strategy_ == "max") {
      const PreEntity* best = group.front();
      double best_max = *std::max_element(best->scores.begin(), best->scores.end());
      for (const auto* p : group) {
        const double m = *std::max_element(p->scores.begin(), p->scores.end());
        if (m > best_max) best = p, best_max = m;
      }
      const size_t k = argmax(best->scores);
      e.entity = label_of(f_.config, k);
      e.score = best->scores[k];
    } else {  // average
      std::vector<double> avg(group.front()->scores.size(), 0.0);
      for (const auto* p : group)
        for (size_t k = 0; k < avg.size(); ++k) avg[k] += p->scores[k];
      for (auto& v : avg) v /= static_cast<double>(group.size());
      const size_t k = argmax(avg);
      e.entity = label_of(f_.config, k);
      e.score = avg[k];
    }
    return e;
  }

  std::vector<Entity> aggregate(const std::vector<PreEntity>& pre) const {
    std::vector<Entity> entities;
    if (strategy_ == "none" || strategy_ == "simple") {
      for (const auto& p : pre) {
        const size_t k = argmax(p.scores);
        entities.push_back({label_of(f_.config, k), p.scores[k], p.index, p.word, p.start, p.end});
      }
    } else {
      std::vector<const PreEntity*> group;
      for (const auto& p : pre) {
        if (!group.empty() && !p.is_subword) {
          entities.push_back(aggregate_word(group));
          group.clear();
        }
        group.push_back(&p);
      }
      if (!group.empty()) entities.push_back(aggregate_word(group));
    }
    if (strategy_ == "none") return entities;
    return group_entities(entities);
  }

  static std::pair<char, std::string> tag_of(const std::string& name) {
    if (name.rfind("B-", 0) == 0) return {'B', name.substr(2)};
    if (name.rfind("I-", 0) == 0) return {'I', name.substr(2)};
    return {'I', name};
  }

  Entity group_sub_entities(const std::vector<Entity>& group) const {
    Entity g;
    const std::string& first = group.front().entity;
    const size_t dash = first.find('-');
    g.entity = dash == std::string::npos ? first : first.substr(dash + 1);
    double sum = 0;
    std::vector<std::string> words;
    for (const auto& e : group) sum += e.score, words.push_back(e.word);
    g.score = sum / static_cast<double>(group.size());
    g.word = f_.tok->tokens_to_string(words);
    g.start = group.front().start;
    g.end = group.back().end;
    return g;
  }

  std::vector<Entity> group_entities(const std::vector<Entity>& entities) const {
    std::vector<Entity> groups, current;
    for (const auto& e : entities) {
      if (current.empty()) {
        current.push_back(e);
        continue;
      }
      const auto [bi, tag] = tag_of(e.entity);
      const auto [last_bi, last_tag] = tag_of(current.back().entity);
      (void)last_bi;
      if (tag == last_tag && bi != 'B') {
        current.push_back(e);
      } else {
        groups.push_back(group_sub_entities(current));
        current = {e};
      }
    }
    if (!current.empty()) groups.push_back(group_sub_entities(current));
    return groups;
  }

  std::string strategy_;
};

// ---- question-answering ----

class QuestionAnswering : public EncoderPipeline {
 public:
  QuestionAnswering(const fs::path& dir, std::string task, const RunOptions& o) : EncoderPipeline(dir, std::move(task), o) {
    if (o.context.empty()) throw UsageError("question-answering needs --context (the text the questions are asked about)");
    // transformers: max_seq_len = min(model_max_length, 384), doc_stride = min(max_seq_len / 2, 128).
    max_seq_len_ = static_cast<size_t>(o.max_seq_len);
    if (f_.max_length > 0) max_seq_len_ = std::min(max_seq_len_, f_.max_length);
    stride_ = std::min(static_cast<size_t>(o.doc_stride), max_seq_len_ / 2);
    if (f_.tokenizer_config.value("padding_side", "right") == "left")
      throw UsageError("question-answering: tokenizers that pad on the left (context first) are not supported");
  }

  std::vector<json> run(const std::vector<std::string>& questions) override {
    const std::string& context = o_.context;
    std::vector<Encoding> windows;
    std::vector<size_t> owner;
    for (size_t q = 0; q < questions.size(); ++q)
      for (auto& w : f_.tok->encode_pair_windows(questions[q], context, max_seq_len_, stride_, true, OffsetUnit::kChar)) {
        windows.push_back(std::move(w));
        owner.push_back(q);
      }
    const auto outs = forward(windows);
    const std::vector<size_t> starts = char_starts(context);
    const size_t top_k = o_.top_k <= 0 ? 1 : static_cast<size_t>(o_.top_k);
    // As transformers: 2k + 10 candidate spans per window (word alignment may merge some); answers of the same
    // text (case-insensitive) add their scores, across the windows too.
    std::vector<std::vector<json>> found(questions.size());
    for (size_t w = 0; w < windows.size(); ++w) {
      auto& list = found[owner[w]];
      for (auto& a : answers(windows[w], outs[w], top_k * 2 + 10, context, starts)) {
        const std::string key = lower(a["answer"].get<std::string>());
        auto same = std::find_if(list.begin(), list.end(), [&](const json& b) { return lower(b["answer"].get<std::string>()) == key; });
        if (same != list.end()) (*same)["score"] = (*same)["score"].get<double>() + a["score"].get<double>();
        else list.push_back(std::move(a));
      }
    }
    std::vector<json> result;
    for (auto& list : found) {
      std::stable_sort(list.begin(), list.end(),
                       [](const json& a, const json& b) { return a["score"].get<double>() > b["score"].get<double>(); });
      if (list.size() > top_k) list.resize(top_k);
      if (list.size() == 1) result.push_back(list[0]);
      else result.push_back(json(list));
    }
    return result;
  }

 private:
  static std::string lower(const std::string& s) {
    std::string out;
    icu::UnicodeString::fromUTF8(s).toLower().toUTF8String(out);
    return out;
  }

  // transformers' select_starts_ends + decode_spans + get_indices for one window.
  std::vector<json> answers(const Encoding& e, const RowOutputs& out, size_t top_k, const std::string& context,
                            const std::vector<size_t>& starts) const {
    const Tensor& sl = output(out, "start_logits");
    const Tensor& el = output(out, "end_logits");
    const size_t n = e.ids.size();
    std::vector<bool> allowed(n);
    for (size_t t = 0; t < n; ++t) allowed[t] = e.sequence_ids[t] == 1 || (f_.cls_id >= 0 && e.ids[t] == f_.cls_id);
    auto probs = [&](const Tensor& logits) {
      std::vector<float> x(n);
      for (size_t t = 0; t < n; ++t) x[t] = allowed[t] ? logits.data[t] : -10000.0f;
      std::vector<double> p = softmax(x.data(), n);
      p[0] = 0.0;  // transformers masks the first token (CLS) after the softmax
      return p;
    };
    const std::vector<double> ps = probs(sl), pe = probs(el);
    const size_t span = static_cast<size_t>(std::max(1, o_.max_answer_len));
    struct Cand { double score; size_t s, e; };
    std::vector<Cand> cands;
    for (size_t s = 0; s < n; ++s)
      for (size_t t = s; t < std::min(n, s + span); ++t) cands.push_back({ps[s] * pe[t], s, t});
    std::stable_sort(cands.begin(), cands.end(), [](const Cand& a, const Cand& b) { return a.score > b.score; });
    if (cands.size() > top_k) cands.resize(top_k);
    std::vector<json> result;
    for (const auto& c : cands) {
      if (!allowed[c.s] || !allowed[c.e]) continue;
      size_t begin = e.offsets[c.s].first, end = e.offsets[c.e].second;
      const int64_t ws = e.word_ids[c.s], we = e.word_ids[c.e];
      if (ws >= 0 && we >= 0 && e.sequence_ids[c.s] == 1 && e.sequence_ids[c.e] == 1) {
        // Align to whole words: the first token of the start word to the last token of the end word.
        bool seen_start = false;
        for (size_t t = 0; t < n; ++t) {
          if (e.sequence_ids[t] != 1) continue;
          if (e.word_ids[t] == ws && !seen_start) begin = e.offsets[t].first, seen_start = true;
          if (e.word_ids[t] == we) end = e.offsets[t].second;
        }
      }
      result.push_back({{"score", c.score}, {"start", begin}, {"end", end}, {"answer", char_slice(context, starts, begin, end)}});
    }
    return result;
  }

  size_t max_seq_len_ = 384, stride_ = 128;
};

// ---- fill-mask ----

class FillMask : public EncoderPipeline {
 public:
  FillMask(const fs::path& dir, std::string task, const RunOptions& o) : EncoderPipeline(dir, std::move(task), o) {
    if (f_.mask_id < 0)
      throw InputError((dir / "tokenizer_config.json").string(), "no mask_token: the fill-mask pipeline needs one");
  }

  std::vector<json> run(const std::vector<std::string>& inputs) override {
    std::vector<Encoding> encs;
    for (size_t i = 0; i < inputs.size(); ++i) {
      encs.push_back(f_.tok->encode(inputs[i]));
      if (std::find(encs.back().ids.begin(), encs.back().ids.end(), f_.mask_id) == encs.back().ids.end())
        throw InputError("fill-mask: input " + std::to_string(i + 1) + " has no " + f_.mask_token + " token: \"" +
                         clip_for_message(inputs[i]) + "\"");
    }
    const auto outs = forward(encs);
    std::vector<json> answers;
    for (size_t i = 0; i < inputs.size(); ++i) {
      const Encoding& e = encs[i];
      const Tensor& logits = output(outs[i], "logits");
      const size_t vocab = static_cast<size_t>(logits.shape.back());
      std::vector<size_t> masks;
      for (size_t t = 0; t < e.ids.size(); ++t)
        if (e.ids[t] == f_.mask_id) masks.push_back(t);
      const bool single = masks.size() == 1;
      const size_t k = std::min(vocab, static_cast<size_t>(o_.top_k <= 0 ? 5 : o_.top_k));
      json rows = json::array();
      for (size_t m : masks) {
        const std::vector<double> p = softmax(logits.data.data() + m * vocab, vocab);
        std::vector<size_t> order(vocab);
        std::iota(order.begin(), order.end(), size_t{0});
        std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                          [&](size_t a, size_t b) { return p[a] > p[b] || (p[a] == p[b] && a < b); });
        json row = json::array();
        for (size_t r = 0; r < k; ++r) {
          const int64_t id = static_cast<int64_t>(order[r]);
          std::vector<int64_t> tokens;
          for (size_t t = 0; t < e.ids.size(); ++t) {
            const int64_t v = t == m ? id : e.ids[t];
            if (v != f_.pad_id) tokens.push_back(v);
          }
          row.push_back({{"score", static_cast<double>(static_cast<float>(p[order[r]]))},
                         {"token", id},
                         {"token_str", f_.tok->decode({id}, false)},
                         {"sequence", f_.tok->decode(tokens, single)}});
        }
        rows.push_back(row);
      }
      answers.push_back(single ? rows[0] : rows);
    }
    return answers;
  }
};

}  // namespace

std::unique_ptr<Pipeline> make_encoder_pipeline(const fs::path& folder, const std::string& task, const RunOptions& options) {
  const std::optional<Task> t = parse_task(task);
  if (!t) throw UsageError("unknown pipeline '" + task + "' (known: " + known_task_names() + ")");
  try {
    switch (*t) {
      case Task::kFeatureExtraction: return std::make_unique<FeatureExtraction>(folder, task, options);
      case Task::kSequenceClassification: return std::make_unique<TextClassification>(folder, task, options);
      case Task::kTokenClassification: return std::make_unique<TokenClassification>(folder, task, options);
      case Task::kQuestionAnswering: return std::make_unique<QuestionAnswering>(folder, task, options);
      case Task::kMaskedLM: return std::make_unique<FillMask>(folder, task, options);
      default: break;
    }
  } catch (const nlohmann::json::exception& e) {  // a config value of the wrong type
    throw InputError(folder.string(), std::string("unexpected value in config.json or the tokenizer files: ") + e.what());
  }
  throw UsageError("the " + task + " pipeline is not an encoder pipeline");
}

}  // namespace trex::pipelines
