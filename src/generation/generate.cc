// The generation loop: a StepModel (decoder-only or encoder-decoder over ONNX Runtime) gives the last position's
// logits of every row; the search (greedy / sampling, or beam search) picks tokens as transformers' generate()
// does and feeds them back.
#include "generation/generate.h"

#include <onnxruntime_cxx_api.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <limits>
#include <map>
#include <numeric>
#include <random>
#include <set>

#include "io/json_file.h"
#include "io/safe_open.h"
#include "runtime/ort_session.h"
#include "util/error.h"

namespace trex::generation {

namespace fs = std::filesystem;
using nlohmann::json;

namespace {

constexpr float kNegInf = -std::numeric_limits<float>::infinity();

int64_t as_int(const json& v, const std::string& key, const std::string& file) {
  if (!v.is_number_integer()) throw InputError(file, "`" + key + "` must be an integer, not " + json_type_name(v));
  return v.get<int64_t>();
}
double as_number(const json& v, const std::string& key, const std::string& file) {
  if (!v.is_number()) throw InputError(file, "`" + key + "` must be a number, not " + json_type_name(v));
  return v.get<double>();
}

}  // namespace

void GenerationConfig::update(const json& j, const std::string& file) {
  if (!j.is_object()) throw InputError(file, "expected a JSON object");
  auto has = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };
  if (has("max_new_tokens")) max_new_tokens = as_int(j["max_new_tokens"], "max_new_tokens", file);
  if (has("max_length")) max_length = as_int(j["max_length"], "max_length", file);
  if (has("min_length")) min_length = as_int(j["min_length"], "min_length", file);
  if (has("min_new_tokens")) min_new_tokens = as_int(j["min_new_tokens"], "min_new_tokens", file);
  if (has("do_sample")) {
    if (!j["do_sample"].is_boolean()) throw InputError(file, "`do_sample` must be a boolean");
    do_sample = j["do_sample"].get<bool>();
  }
  if (has("temperature")) temperature = static_cast<float>(as_number(j["temperature"], "temperature", file));
  if (has("top_k")) top_k = static_cast<int>(as_int(j["top_k"], "top_k", file));
  if (has("top_p")) top_p = static_cast<float>(as_number(j["top_p"], "top_p", file));
  if (has("repetition_penalty"))
    repetition_penalty = static_cast<float>(as_number(j["repetition_penalty"], "repetition_penalty", file));
  if (has("no_repeat_ngram_size"))
    no_repeat_ngram_size = static_cast<int>(as_int(j["no_repeat_ngram_size"], "no_repeat_ngram_size", file));
  if (has("num_beams")) num_beams = static_cast<int>(as_int(j["num_beams"], "num_beams", file));
  if (has("length_penalty")) length_penalty = static_cast<float>(as_number(j["length_penalty"], "length_penalty", file));
  if (has("early_stopping")) {
    const json& e = j["early_stopping"];
    if (e.is_boolean()) early_stopping = e.get<bool>() ? EarlyStopping::kTrue : EarlyStopping::kFalse;
    else if (e.is_string() && e.get<std::string>() == "never") early_stopping = EarlyStopping::kNever;
    else throw InputError(file, "`early_stopping` must be true, false or \"never\"");
  }
  if (has("eos_token_id")) {
    const json& e = j["eos_token_id"];
    eos_token_ids.clear();
    if (e.is_array()) {
      if (e.size() > 1024) throw InputError(file, "`eos_token_id` lists more than 1024 ids");
      for (const auto& x : e) eos_token_ids.push_back(as_int(x, "eos_token_id", file));
    } else {
      eos_token_ids.push_back(as_int(e, "eos_token_id", file));
    }
  }
  if (has("pad_token_id")) pad_token_id = as_int(j["pad_token_id"], "pad_token_id", file);
  if (has("decoder_start_token_id"))
    decoder_start_token_id = as_int(j["decoder_start_token_id"], "decoder_start_token_id", file);
  if (has("forced_bos_token_id")) forced_bos_token_id = as_int(j["forced_bos_token_id"], "forced_bos_token_id", file);
  if (has("forced_eos_token_id")) {
    const json& e = j["forced_eos_token_id"];
    forced_eos_token_id = e.is_array() ? (e.empty() ? -1 : as_int(e[0], "forced_eos_token_id", file))
                                       : as_int(e, "forced_eos_token_id", file);
  }
  if (has("bad_words_ids")) {
    const json& b = j["bad_words_ids"];
    if (!b.is_array()) throw InputError(file, "`bad_words_ids` must be a list of lists of ids");
    bad_token_ids.clear();
    for (const auto& w : b)
      if (w.is_array() && w.size() == 1) bad_token_ids.push_back(as_int(w[0], "bad_words_ids", file));
  }
}

GenerationConfig GenerationConfig::from_folder(const fs::path& folder) {
  GenerationConfig c;
  const fs::path gen = folder / "generation_config.json";
  if (fs::exists(gen)) {
    c.update(read_json_file(gen), gen.string());
  } else if (fs::exists(folder / "config.json")) {
    c.update(read_json_file(folder / "config.json"), (folder / "config.json").string());
  }
  return c;
}

namespace {

// ----------------------------------------------------------------------------------------------------------
// Models: the last position's logits of each row, step by step.
// ----------------------------------------------------------------------------------------------------------

Ort::Session open_session(const fs::path& folder, const std::string& name, int threads) {
  const fs::path file = folder / name;
  { OpenFile f = open_regular_file_in(folder, file, kNoSizeLimit, "an ONNX model"); }  // confined, regular file
  Ort::SessionOptions so;
  if (threads > 0) so.SetIntraOpNumThreads(threads);
  so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
  try {
    return Ort::Session(ort_env(), file.c_str(), so);
  } catch (const Ort::Exception& e) {
    throw InputError(file.string(), std::string("ONNX Runtime cannot load it: ") + e.what());
  }
}

struct CacheSlot {
  std::string input, output;
  int64_t heads = 0, head_dim = 0;
};

// Names of the cache inputs and the present outputs feeding them, with their fixed dims.
std::vector<CacheSlot> cache_slots(const Ort::Session& s, const std::string& file) {
  std::vector<CacheSlot> slots;
  const auto outs = output_names(s);
  const auto ins = input_names(s);
  for (size_t i = 0; i < ins.size(); ++i) {
    const std::string& n = ins[i];
    if (n.rfind("past_key_values.", 0) != 0) continue;
    CacheSlot c;
    c.input = n;
    c.output = "present." + n.substr(std::strlen("past_key_values."));
    if (std::find(outs.begin(), outs.end(), c.output) == outs.end())
      throw InputError(file, "cache input " + n + " has no output " + c.output);
    auto shape = s.GetInputTypeInfo(i).GetTensorTypeAndShapeInfo().GetShape();
    if (shape.size() != 4 || shape[1] <= 0 || shape[3] <= 0)
      throw InputError(file, "cache input " + n + " is not [batch, heads, length, head_dim] with fixed heads/head_dim");
    c.heads = shape[1];
    c.head_dim = shape[3];
    slots.push_back(c);
  }
  return slots;
}

bool has_name(const std::vector<std::string>& names, const std::string& n) {
  return std::find(names.begin(), names.end(), n) != names.end();
}

Ort::Value empty_cache(int64_t rows, const CacheSlot& c) {
  static Ort::AllocatorWithDefaultOptions alloc;
  const int64_t shape[4] = {rows, c.heads, 0, c.head_dim};
  return Ort::Value::CreateTensor<float>(alloc, shape, 4);
}

// New tensor whose row r is row src[r] of `v` (first dim = rows).
Ort::Value gather_rows(const Ort::Value& v, const std::vector<int64_t>& src) {
  static Ort::AllocatorWithDefaultOptions alloc;
  auto info = v.GetTensorTypeAndShapeInfo();
  auto shape = info.GetShape();
  const size_t elem = info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? 4
                      : info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16 ? 2
                                                                                        : 0;
  if (elem == 0) throw InputError("cache tensors must be float or float16");
  size_t row_elems = 1;
  for (size_t d = 1; d < shape.size(); ++d) row_elems *= static_cast<size_t>(shape[d]);
  shape[0] = static_cast<int64_t>(src.size());
  Ort::Value out = Ort::Value::CreateTensor(alloc, shape.data(), shape.size(), info.GetElementType());
  const char* from = static_cast<const char*>(v.GetTensorRawData());
  char* to = static_cast<char*>(out.GetTensorMutableRawData());
  for (size_t r = 0; r < src.size(); ++r)
    std::memcpy(to + r * row_elems * elem, from + static_cast<size_t>(src[r]) * row_elems * elem, row_elems * elem);
  return out;
}

class StepModel {
 public:
  virtual ~StepModel() = default;
  // First step over the inputs (decoder-only: prompts, left-padded here; encoder-decoder: source ids,
  // right-padded, and the decoder start token), each input on `copies` consecutive rows (beams). Returns
  // [inputs x copies, vocab] logits.
  virtual const std::vector<float>& start(const std::vector<std::vector<int64_t>>& inputs, int64_t pad,
                                          int64_t decoder_start, int copies) = 0;
  virtual const std::vector<float>& next(const std::vector<int64_t>& tokens) = 0;
  // Row r of the state becomes row src[r] (beam search).
  virtual void reorder(const std::vector<int64_t>& src) = 0;
  int64_t vocab = 0;
};

// Copies the last position of [rows, seq, vocab] logits.
void last_logits(const Ort::Value& logits, std::vector<float>& out, int64_t& vocab, const std::string& file) {
  auto info = logits.GetTensorTypeAndShapeInfo();
  auto shape = info.GetShape();
  if (shape.size() != 3) throw InputError(file, "logits are not [batch, sequence, vocab]");
  if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT) throw InputError(file, "logits are not float32");
  const int64_t rows = shape[0], seq = shape[1];
  vocab = shape[2];
  out.resize(static_cast<size_t>(rows * vocab));
  const float* p = logits.GetTensorData<float>();
  for (int64_t r = 0; r < rows; ++r)
    std::memcpy(out.data() + r * vocab, p + (r * seq + seq - 1) * vocab, static_cast<size_t>(vocab) * sizeof(float));
}

// A tensor over the same float data as `v` (not owning it): an input that must stay where it is.
Ort::Value float_view(Ort::Value& v) {
  static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
  auto info = v.GetTensorTypeAndShapeInfo();
  auto shape = info.GetShape();
  return Ort::Value::CreateTensor<float>(mem, v.GetTensorMutableData<float>(), info.GetElementCount(), shape.data(),
                                         shape.size());
}

// One step of a decoder with a cache: the cache slots' past values go after the inputs already in `in`; the
// logits of the last position land in `logits`, and the present values become the next step's past (moved, not
// copied). Slots with `kept[i]` set (an encoder-decoder's cross-attention cache after its first step) are read in
// place and keep their past: their present output is not fetched.
void run_cached_step(Ort::Session& session, std::vector<const char*>& in_names, std::vector<Ort::Value>& in,
                     const std::vector<CacheSlot>& slots, std::vector<Ort::Value>& past,
                     const std::vector<std::string>& output_names, const std::string& file,
                     std::vector<float>& logits, int64_t& vocab, const std::vector<bool>& kept = {}) {
  std::vector<const char*> out_names{output_names.at(0).c_str()};
  std::vector<size_t> fetched;  // slot of each present output after the logits
  for (size_t i = 0; i < slots.size(); ++i) {
    in_names.push_back(slots[i].input.c_str());
    if (i < kept.size() && kept[i]) {
      in.push_back(float_view(past[i]));
    } else {
      in.push_back(std::move(past[i]));
      out_names.push_back(output_names.at(i + 1).c_str());
      fetched.push_back(i);
    }
  }
  std::vector<Ort::Value> out;
  try {
    out = session.Run(Ort::RunOptions{nullptr}, in_names.data(), in.data(), in.size(), out_names.data(),
                      out_names.size());
  } catch (const Ort::Exception& e) {
    throw InputError(file, std::string("ONNX Runtime failed at a generation step: ") + e.what());
  }
  last_logits(out[0], logits, vocab, file);
  for (size_t k = 0; k < fetched.size(); ++k) past[fetched[k]] = std::move(out[k + 1]);  // fed back as they are
}

class DecoderOnlyModel : public StepModel {
 public:
  DecoderOnlyModel(const fs::path& folder, const std::string& name, int threads)
      : file_((folder / name).string()), session_(open_session(folder, name, threads)) {
    const auto ins = input_names(session_);
    for (const char* n : {"input_ids", "attention_mask"})
      if (!has_name(ins, n)) throw InputError(file_, std::string("no `") + n + "` input (not a decoder trex exported?)");
    has_positions_ = has_name(ins, "position_ids");
    slots_ = cache_slots(session_, file_);
    if (slots_.empty()) throw InputError(file_, "no past_key_values.* inputs (export the decoder with its cache)");
    if (!has_name(output_names(session_), "logits")) throw InputError(file_, "no `logits` output");
    for (const auto& n : ins)
      if (n != "input_ids" && n != "attention_mask" && n != "position_ids" && n.rfind("past_key_values.", 0) != 0)
        throw InputError(file_, "unexpected input `" + n + "`");
    out_names_ = {"logits"};
    for (const auto& s : slots_) out_names_.push_back(s.output);
  }

  const std::vector<float>& start(const std::vector<std::vector<int64_t>>& inputs, int64_t pad, int64_t,
                                  int copies) override {
    std::vector<std::vector<int64_t>> prompts;  // the prefill runs on every row, as transformers' does
    for (const auto& p : inputs)
      for (int k = 0; k < copies; ++k) prompts.push_back(p);
    rows_ = static_cast<int64_t>(prompts.size());
    size_t len = 0;
    for (const auto& p : prompts) len = std::max(len, p.size());
    if (len == 0) throw UsageError("an empty prompt (no tokens) cannot be continued");
    std::vector<int64_t> ids(rows_ * len, pad < 0 ? 0 : pad);
    mask_.assign(rows_, {});
    for (int64_t r = 0; r < rows_; ++r) {
      const auto& p = prompts[r];
      if (p.empty()) throw UsageError("an empty prompt (no tokens) cannot be continued");
      std::copy(p.begin(), p.end(), ids.begin() + r * len + (len - p.size()));
      mask_[r].assign(len - p.size(), 0);
      mask_[r].resize(len, 1);
    }
    past_.clear();
    for (const auto& s : slots_) past_.push_back(empty_cache(rows_, s));
    return run(ids, static_cast<int64_t>(len));
  }

  const std::vector<float>& next(const std::vector<int64_t>& tokens) override {
    for (auto& m : mask_) m.push_back(1);
    return run(tokens, 1);
  }

  void reorder(const std::vector<int64_t>& src) override {
    for (auto& p : past_) p = gather_rows(p, src);
    std::vector<std::vector<int64_t>> m(src.size());
    for (size_t r = 0; r < src.size(); ++r) m[r] = mask_[src[r]];
    mask_ = std::move(m);
  }

 private:
  const std::vector<float>& run(const std::vector<int64_t>& ids, int64_t seq) {
    static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const int64_t total = static_cast<int64_t>(mask_[0].size());
    std::vector<int64_t> mask(rows_ * total), pos(rows_ * seq);
    for (int64_t r = 0; r < rows_; ++r) {
      std::copy(mask_[r].begin(), mask_[r].end(), mask.begin() + r * total);
      // transformers: cumsum(mask) - 1, padding positions 1; the last `seq` columns.
      int64_t count = 0;
      for (int64_t t = 0; t < total; ++t) {
        count += mask_[r][t];
        if (t >= total - seq) pos[r * seq + (t - (total - seq))] = mask_[r][t] ? count - 1 : 1;
      }
    }
    const int64_t ids_shape[2] = {rows_, seq}, mask_shape[2] = {rows_, total};
    std::vector<const char*> in_names;
    std::vector<Ort::Value> in;
    in_names.push_back("input_ids");
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(ids.data()), ids.size(), ids_shape, 2));
    in_names.push_back("attention_mask");
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, mask.data(), mask.size(), mask_shape, 2));
    if (has_positions_) {
      in_names.push_back("position_ids");
      in.push_back(Ort::Value::CreateTensor<int64_t>(mem, pos.data(), pos.size(), ids_shape, 2));
    }
    run_cached_step(session_, in_names, in, slots_, past_, out_names_, file_, logits_, vocab);
    return logits_;
  }

  std::string file_;
  Ort::Session session_;
  bool has_positions_ = false;
  std::vector<CacheSlot> slots_;
  std::vector<std::string> out_names_;
  int64_t rows_ = 0;
  std::vector<std::vector<int64_t>> mask_;
  std::vector<Ort::Value> past_;
  std::vector<float> logits_;
};

class EncoderDecoderModel : public StepModel {
 public:
  EncoderDecoderModel(const fs::path& folder, const std::string& encoder, const std::string& decoder, int threads)
      : enc_file_((folder / encoder).string()),
        dec_file_((folder / decoder).string()),
        encoder_(open_session(folder, encoder, threads)),
        decoder_(open_session(folder, decoder, threads)) {
    const auto ein = input_names(encoder_);
    for (const char* n : {"input_ids", "attention_mask"})
      if (!has_name(ein, n)) throw InputError(enc_file_, std::string("no `") + n + "` input");
    enc_out_ = output_names(encoder_).at(0);
    const auto din = input_names(decoder_);
    for (const char* n : {"input_ids", "encoder_hidden_states"})
      if (!has_name(din, n)) throw InputError(dec_file_, std::string("no `") + n + "` input");
    has_enc_mask_ = has_name(din, "encoder_attention_mask");
    has_flag_ = has_name(din, "use_cache_branch");
    slots_ = cache_slots(decoder_, dec_file_);
    if (slots_.empty()) throw InputError(dec_file_, "no past_key_values.* inputs (export the decoder with its cache)");
    // The cross-attention cache is the first step's: later steps read it in place (their present.*.encoder.*
    // are empty, in trex's merged decoder as in optimum's).
    for (const auto& s : slots_) cross_.push_back(s.input.find(".encoder.") != std::string::npos);
    for (const auto& n : din)
      if (n != "input_ids" && n != "encoder_hidden_states" && n != "encoder_attention_mask" && n != "use_cache_branch" &&
          n.rfind("past_key_values.", 0) != 0)
        throw InputError(dec_file_, "unexpected input `" + n + "`");
    out_names_ = {"logits"};
    for (const auto& s : slots_) out_names_.push_back(s.output);
  }

  const std::vector<float>& start(const std::vector<std::vector<int64_t>>& sources, int64_t pad,
                                  int64_t decoder_start, int copies) override {
    static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    rows_ = static_cast<int64_t>(sources.size());
    size_t len = 0;
    for (const auto& s : sources) len = std::max(len, s.size());
    if (len == 0) throw UsageError("an empty input (no tokens) cannot be encoded");
    enc_ids_.assign(rows_ * len, pad < 0 ? 0 : pad);
    enc_mask_.assign(rows_ * len, 0);
    for (int64_t r = 0; r < rows_; ++r) {  // right padding, as the tokenizer pads encoder inputs
      std::copy(sources[r].begin(), sources[r].end(), enc_ids_.begin() + r * len);
      std::fill(enc_mask_.begin() + r * len, enc_mask_.begin() + r * len + sources[r].size(), 1);
    }
    enc_len_ = static_cast<int64_t>(len);
    const int64_t shape[2] = {rows_, enc_len_};
    Ort::Value in[2] = {Ort::Value::CreateTensor<int64_t>(mem, enc_ids_.data(), enc_ids_.size(), shape, 2),
                        Ort::Value::CreateTensor<int64_t>(mem, enc_mask_.data(), enc_mask_.size(), shape, 2)};
    const char* in_names[2] = {"input_ids", "attention_mask"};
    const char* out_name = enc_out_.c_str();
    std::vector<Ort::Value> out;
    try {
      out = encoder_.Run(Ort::RunOptions{nullptr}, in_names, in, 2, &out_name, 1);
    } catch (const Ort::Exception& e) {
      throw InputError(enc_file_, std::string("ONNX Runtime failed to encode: ") + e.what());
    }
    hidden_ = std::move(out[0]);
    if (copies > 1) {  // the encoder ran once per input; its rows are shared by the input's beams
      std::vector<int64_t> src;
      for (int64_t r = 0; r < rows_; ++r)
        for (int k = 0; k < copies; ++k) src.push_back(r);
      hidden_ = gather_rows(hidden_, src);
      std::vector<int64_t> m(src.size() * enc_len_);
      for (size_t r = 0; r < src.size(); ++r)
        std::copy(enc_mask_.begin() + src[r] * enc_len_, enc_mask_.begin() + (src[r] + 1) * enc_len_,
                  m.begin() + r * enc_len_);
      enc_mask_ = std::move(m);
      rows_ = static_cast<int64_t>(src.size());
    }
    past_.clear();
    for (const auto& s : slots_) past_.push_back(empty_cache(rows_, s));
    has_past_ = false;
    return run(std::vector<int64_t>(rows_, decoder_start));
  }

  const std::vector<float>& next(const std::vector<int64_t>& tokens) override { return run(tokens); }

  void reorder(const std::vector<int64_t>& src) override {
    for (auto& p : past_) p = gather_rows(p, src);
    // Beams of one input share its encoder rows, but a general reorder moves them too.
    hidden_ = gather_rows(hidden_, src);
    std::vector<int64_t> m(src.size() * enc_len_);
    for (size_t r = 0; r < src.size(); ++r)
      std::copy(enc_mask_.begin() + src[r] * enc_len_, enc_mask_.begin() + (src[r] + 1) * enc_len_,
                m.begin() + r * enc_len_);
    enc_mask_ = std::move(m);
  }

 private:
  const std::vector<float>& run(const std::vector<int64_t>& tokens) {
    static const Ort::MemoryInfo mem = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    const int64_t ids_shape[2] = {rows_, 1}, mask_shape[2] = {rows_, enc_len_}, flag_shape[1] = {1};
    bool flag = has_past_;
    std::vector<const char*> in_names;
    std::vector<Ort::Value> in;
    in_names.push_back("input_ids");
    in.push_back(Ort::Value::CreateTensor<int64_t>(mem, const_cast<int64_t*>(tokens.data()), tokens.size(), ids_shape, 2));
    if (has_enc_mask_) {
      in_names.push_back("encoder_attention_mask");
      in.push_back(Ort::Value::CreateTensor<int64_t>(mem, enc_mask_.data(), enc_mask_.size(), mask_shape, 2));
    }
    in_names.push_back("encoder_hidden_states");
    {
      auto info = hidden_.GetTensorTypeAndShapeInfo();
      auto shape = info.GetShape();
      in.push_back(Ort::Value::CreateTensor<float>(mem, hidden_.GetTensorMutableData<float>(),
                                                   info.GetElementCount(), shape.data(), shape.size()));
    }
    if (has_flag_) {
      in_names.push_back("use_cache_branch");
      in.push_back(Ort::Value::CreateTensor<bool>(mem, &flag, 1, flag_shape, 1));
    }
    run_cached_step(decoder_, in_names, in, slots_, past_, out_names_, dec_file_, logits_, vocab,
                    has_past_ ? cross_ : std::vector<bool>{});
    has_past_ = true;
    return logits_;
  }

  std::string enc_file_, dec_file_;
  Ort::Session encoder_, decoder_;
  std::string enc_out_;
  bool has_enc_mask_ = false, has_flag_ = false, has_past_ = false;
  std::vector<CacheSlot> slots_;
  std::vector<bool> cross_;  // per slot: a cross-attention cache, kept from the first step
  std::vector<std::string> out_names_;
  int64_t rows_ = 0, enc_len_ = 0;
  std::vector<int64_t> enc_ids_, enc_mask_;
  Ort::Value hidden_{nullptr};
  std::vector<Ort::Value> past_;
  std::vector<float> logits_;
};

// ----------------------------------------------------------------------------------------------------------
// Logits processors, as transformers orders them.
// ----------------------------------------------------------------------------------------------------------

struct RowState {
  std::vector<int64_t> history;  // ids the repetition penalty sees (prompt without padding / decoder ids)
  std::vector<int64_t> generated;
  int64_t limit = 0;             // new tokens allowed
  int64_t base_len = 0;          // length before generation (prompt, or 1 for the decoder start token)
};

// Repetition penalty, bad words, min length, forced BOS / EOS on one row of scores (logits, or log-probs in beam
// search), at the moment the row holds base_len + generated tokens.
void process(float* s, int64_t vocab, const RowState& row, int64_t generated, const GenerationConfig& c,
             bool encoder_decoder) {
  if (c.repetition_penalty != 1.0f) {
    std::set<int64_t> seen(row.history.begin(), row.history.end());
    for (int64_t t : seen) {
      if (t < 0 || t >= vocab) continue;
      float& x = s[t];
      x = x < 0 ? x * c.repetition_penalty : x / c.repetition_penalty;
    }
  }
  if (c.no_repeat_ngram_size > 0) {
    // A token that would repeat an n-gram of the ids so far (their last n - 1 ids followed by it) is banned.
    const auto& h = row.history;
    const size_t n = static_cast<size_t>(c.no_repeat_ngram_size);
    if (h.size() + 1 >= n) {
      const size_t start = h.size() + 1 - n;
      for (size_t i = 0; i + n <= h.size(); ++i)
        if (std::equal(h.begin() + i, h.begin() + i + (n - 1), h.begin() + start)) {
          const int64_t t = h[i + n - 1];
          if (t >= 0 && t < vocab) s[t] = kNegInf;
        }
    }
  }
  for (int64_t t : c.bad_token_ids)
    if (t >= 0 && t < vocab) s[t] = kNegInf;
  const int64_t cur_len = row.base_len + generated;
  if (cur_len < c.min_length || generated < c.min_new_tokens)
    for (int64_t t : c.eos_token_ids)
      if (t >= 0 && t < vocab) s[t] = kNegInf;
  if (encoder_decoder && c.forced_bos_token_id >= 0 && cur_len == 1 && c.forced_bos_token_id < vocab) {
    std::fill(s, s + vocab, kNegInf);
    s[c.forced_bos_token_id] = 0.0f;
  }
  if (c.forced_eos_token_id >= 0 && c.forced_eos_token_id < vocab && generated + 1 == row.limit) {
    std::fill(s, s + vocab, kNegInf);
    s[c.forced_eos_token_id] = 0.0f;
  }
}

// Temperature, top-k, top-p (transformers' warpers, in that order), in place on logits.
void warp(float* s, int64_t vocab, const GenerationConfig& c) {
  if (c.temperature != 1.0f)
    for (int64_t i = 0; i < vocab; ++i) s[i] /= c.temperature;
  if (c.top_k > 0 && c.top_k < vocab) {
    std::vector<float> v(s, s + vocab);
    std::nth_element(v.begin(), v.begin() + (c.top_k - 1), v.end(), std::greater<float>());
    const float kth = v[c.top_k - 1];
    for (int64_t i = 0; i < vocab; ++i)
      if (s[i] < kth) s[i] = kNegInf;
  }
  if (c.top_p < 1.0f) {
    // Sorted ascending, tokens whose cumulative probability stays <= 1 - top_p go (the most likely always stays).
    std::vector<int64_t> order(vocab);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int64_t a, int64_t b) { return s[a] < s[b]; });
    const float mx = s[order.back()];
    double sum = 0;
    std::vector<double> p(vocab);
    for (int64_t i = 0; i < vocab; ++i) sum += (p[i] = s[order[i]] == kNegInf ? 0.0 : std::exp(double(s[order[i]] - mx)));
    double cum = 0;
    for (int64_t i = 0; i + 1 < vocab; ++i) {
      cum += p[i] / sum;
      if (cum <= 1.0 - c.top_p) s[order[i]] = kNegInf;
    }
  }
}

void log_softmax(float* s, int64_t vocab) {
  const float mx = *std::max_element(s, s + vocab);
  double sum = 0;
  for (int64_t i = 0; i < vocab; ++i) sum += std::exp(double(s[i] - mx));
  const float lse = mx + static_cast<float>(std::log(sum));
  for (int64_t i = 0; i < vocab; ++i) s[i] -= lse;
}

bool is_eos(const GenerationConfig& c, int64_t t) {
  return std::find(c.eos_token_ids.begin(), c.eos_token_ids.end(), t) != c.eos_token_ids.end();
}

class GeneratorImpl : public Generator {
 public:
  GeneratorImpl(std::unique_ptr<StepModel> m, bool enc_dec) : model_(std::move(m)), enc_dec_(enc_dec) {}
  bool encoder_decoder() const override { return enc_dec_; }
  const GenerationStats& stats() const override { return stats_; }

  std::vector<std::vector<int64_t>> generate(const std::vector<std::vector<int64_t>>& prompts,
                                             const GenerationConfig& c, const OnTokens& on_tokens) override {
    if (prompts.empty()) return {};
    if (c.num_beams < 1 || c.num_beams > 256) throw UsageError("num_beams must be between 1 and 256");
    if (c.temperature <= 0 && c.do_sample) throw UsageError("temperature must be positive");
    if (c.top_p <= 0 && c.do_sample) throw UsageError("top_p must be positive");
    if (c.max_new_tokens == 0) throw UsageError("max_new_tokens must be greater than 0");
    if (c.num_beams > 1 && c.do_sample) throw UsageError("sampling with beam search (do_sample with num_beams > 1) is not supported");
    if (enc_dec_ && c.decoder_start_token_id < 0)
      throw InputError("generation_config.json has no decoder_start_token_id (needed by an encoder-decoder)");
    std::vector<RowState> rows(prompts.size());
    for (size_t i = 0; i < prompts.size(); ++i) {
      RowState& r = rows[i];
      r.base_len = enc_dec_ ? 1 : static_cast<int64_t>(prompts[i].size());
      r.history = enc_dec_ ? std::vector<int64_t>{c.decoder_start_token_id} : prompts[i];
      r.limit = c.max_new_tokens > 0 ? c.max_new_tokens : std::max<int64_t>(1, c.max_length - r.base_len);
    }
    const int64_t pad = c.pad_token_id >= 0 ? c.pad_token_id : (c.eos_token_ids.empty() ? 0 : c.eos_token_ids[0]);
    if (c.num_beams == 1) return sample_or_greedy(prompts, rows, c, pad, on_tokens);
    return beam_search(prompts, rows, c, pad);
  }

 private:
  std::vector<std::vector<int64_t>> sample_or_greedy(const std::vector<std::vector<int64_t>>& prompts,
                                                     std::vector<RowState>& rows, const GenerationConfig& c,
                                                     int64_t pad, const OnTokens& on_tokens) {
    std::mt19937_64 rng(c.seed);
    const size_t n = rows.size();
    std::vector<bool> done(n, false);
    std::vector<int64_t> tokens(n, pad);
    stats_ = GenerationStats{};
    stats_.rows = static_cast<int64_t>(n);
    const double t0 = now();
    const std::vector<float>* logits = &model_->start(prompts, pad, c.decoder_start_token_id, 1);
    stats_.prefill_s = now() - t0;
    double first_token = 0;
    std::vector<float> s;
    for (int64_t step = 0;; ++step) {
      const int64_t V = model_->vocab;
      for (size_t r = 0; r < n; ++r) {
        if (done[r]) {
          tokens[r] = pad;
          continue;
        }
        s.assign(logits->begin() + r * V, logits->begin() + (r + 1) * V);
        process(s.data(), V, rows[r], static_cast<int64_t>(rows[r].generated.size()), c, enc_dec_);
        int64_t t;
        if (c.do_sample) {
          warp(s.data(), V, c);
          const float mx = *std::max_element(s.begin(), s.end());
          std::vector<double> w(V);
          for (int64_t i = 0; i < V; ++i) w[i] = s[i] == kNegInf ? 0.0 : std::exp(double(s[i] - mx));
          // Inverse CDF on a 53-bit uniform draw: the same tokens for a seed on any standard library.
          const double total = std::accumulate(w.begin(), w.end(), 0.0);
          const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * total;
          double cum = 0;
          t = -1;
          for (int64_t i = 0; i < V; ++i) {
            if (w[i] <= 0) continue;
            t = i;  // the last token with weight, should rounding leave u above the sum
            cum += w[i];
            if (u < cum) break;
          }
        } else {
          t = std::max_element(s.begin(), s.end()) - s.begin();
        }
        tokens[r] = t;
        rows[r].generated.push_back(t);
        rows[r].history.push_back(t);
        if (is_eos(c, t) || static_cast<int64_t>(rows[r].generated.size()) >= rows[r].limit) done[r] = true;
        if (on_tokens) on_tokens(r, rows[r].generated);
      }
      if (step == 0) first_token = now();
      stats_.decode_steps = step;
      stats_.decode_s = now() - first_token;
      if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
      logits = &model_->next(tokens);
    }
    std::vector<std::vector<int64_t>> out;
    for (auto& r : rows) out.push_back(std::move(r.generated));
    return out;
  }

  // transformers' beam search (the vectorized one of generate()), each input on its own: the finished
  // hypotheses are the best num_beams by sum of log-probs / generated_length ** length_penalty.
  std::vector<std::vector<int64_t>> beam_search(const std::vector<std::vector<int64_t>>& prompts,
                                                std::vector<RowState>& inputs, const GenerationConfig& c,
                                                int64_t pad) {
    const size_t B = inputs.size();
    const int K = c.num_beams;
    const size_t keep = static_cast<size_t>(std::max<size_t>(2, 1 + c.eos_token_ids.size()) * K);
    std::vector<RowState> beams;  // B * K rows
    for (size_t b = 0; b < B; ++b)
      for (int k = 0; k < K; ++k) beams.push_back(inputs[b]);
    std::vector<float> running(B * K, 0.0f);
    for (size_t b = 0; b < B; ++b)
      for (int k = 1; k < K; ++k) running[b * K + k] = -1e9f;
    struct Hyp {
      float score;
      std::vector<int64_t> tokens;
    };
    std::vector<std::vector<Hyp>> finished(B);
    std::vector<bool> improvable(B, true), done(B, false);

    stats_ = GenerationStats{};
    stats_.rows = static_cast<int64_t>(beams.size());
    const double t0 = now();
    const std::vector<float>* logits = &model_->start(prompts, pad, c.decoder_start_token_id, K);
    stats_.prefill_s = now() - t0;
    double first_token = 0;
    std::vector<float> lp;
    std::vector<int64_t> src(B * K), tokens(B * K);
    for (int64_t g = 0;; ++g) {  // g: tokens generated before this step
      const int64_t V = model_->vocab;
      if (static_cast<int64_t>(keep) > K * V) throw UsageError("num_beams is too large for a vocabulary of " + std::to_string(V));
      std::vector<RowState> next_beams(B * K);
      for (size_t b = 0; b < B; ++b) {
        const int64_t limit = inputs[b].limit;
        if (done[b]) {  // keep its rows alive (fed pad) without changing its result
          for (int k = 0; k < K; ++k) {
            src[b * K + k] = static_cast<int64_t>(b * K + k);
            tokens[b * K + k] = pad;
            next_beams[b * K + k] = std::move(beams[b * K + k]);
          }
          continue;
        }
        lp.assign(static_cast<size_t>(K) * V, 0.0f);
        for (int k = 0; k < K; ++k) {
          float* s = lp.data() + static_cast<size_t>(k) * V;
          std::copy(logits->begin() + (b * K + k) * V, logits->begin() + (b * K + k + 1) * V, s);
          log_softmax(s, V);
          process(s, V, beams[b * K + k], g, c, enc_dec_);
          for (int64_t v = 0; v < V; ++v) s[v] += running[b * K + k];
        }
        // Top `keep` continuations over beams x vocabulary.
        std::vector<int64_t> idx(lp.size());
        std::iota(idx.begin(), idx.end(), 0);
        std::partial_sort(idx.begin(), idx.begin() + static_cast<std::ptrdiff_t>(keep), idx.end(),
                          [&](int64_t a, int64_t z) { return lp[a] > lp[z] || (lp[a] == lp[z] && a < z); });
        idx.resize(keep);
        std::vector<bool> hits(keep);
        for (size_t i = 0; i < keep; ++i) {
          const int64_t tok = idx[i] % V;
          hits[i] = is_eos(c, tok) || g + 1 >= limit;
        }
        // Finished hypotheses: only from the first K candidates, while an improvement is possible.
        const bool full = static_cast<int>(finished[b].size()) == K;
        if (improvable[b] && !(full && c.early_stopping == GenerationConfig::EarlyStopping::kTrue)) {
          for (int i = 0; i < K; ++i) {
            if (!hits[i]) continue;
            const int64_t beam = idx[i] / V;
            Hyp h{lp[idx[i]] / static_cast<float>(std::pow(double(g + 1), double(c.length_penalty))),
                  beams[b * K + beam].generated};
            h.tokens.push_back(idx[i] % V);
            finished[b].push_back(std::move(h));
          }
          std::stable_sort(finished[b].begin(), finished[b].end(),
                           [](const Hyp& x, const Hyp& y) { return x.score > y.score; });
          if (static_cast<int>(finished[b].size()) > K) finished[b].resize(K);
        }
        // Running beams: the best K continuations that did not stop.
        std::vector<size_t> order(keep);
        std::iota(order.begin(), order.end(), 0);
        std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
          const float sx = lp[idx[x]] + (hits[x] ? -1e9f : 0.0f), sy = lp[idx[y]] + (hits[y] ? -1e9f : 0.0f);
          return sx > sy;
        });
        for (int k = 0; k < K; ++k) {
          const size_t i = order[k];
          const int64_t beam = idx[i] / V, tok = idx[i] % V;
          src[b * K + k] = static_cast<int64_t>(b * K + beam);
          tokens[b * K + k] = tok;
          running[b * K + k] = lp[idx[i]] + (hits[i] ? -1e9f : 0.0f);
          RowState nb = beams[b * K + beam];
          nb.generated.push_back(tok);
          nb.history.push_back(tok);
          next_beams[b * K + k] = std::move(nb);
        }
        // The early-stop heuristic, then whether this input is done.
        const int64_t cur = g + 1;
        const double best_len =
            (c.early_stopping == GenerationConfig::EarlyStopping::kNever && c.length_penalty > 0) ? double(limit)
                                                                                                   : double(cur);
        const float best_running = static_cast<float>(running[b * K] / std::pow(best_len, double(c.length_penalty)));
        const bool all_finished = static_cast<int>(finished[b].size()) == K;
        if (all_finished && !(best_running > finished[b].back().score)) improvable[b] = false;
        const bool all_hit = std::all_of(hits.begin(), hits.end(), [](bool h) { return h; });
        if (!improvable[b] || (all_finished && c.early_stopping == GenerationConfig::EarlyStopping::kTrue) || all_hit)
          done[b] = true;
      }
      beams = std::move(next_beams);
      if (g == 0) first_token = now();
      stats_.decode_steps = g;
      stats_.decode_s = now() - first_token;
      if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
      bool identity = true;
      for (size_t r = 0; r < src.size(); ++r) identity = identity && src[r] == static_cast<int64_t>(r);
      if (!identity) model_->reorder(src);
      logits = &model_->next(tokens);
    }
    std::vector<std::vector<int64_t>> out;
    for (size_t b = 0; b < B; ++b) out.push_back(finished[b].empty() ? beams[b * K].generated : finished[b][0].tokens);
    return out;
  }

  static double now() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
  }

  std::unique_ptr<StepModel> model_;
  bool enc_dec_;
  GenerationStats stats_;
};

}  // namespace

std::unique_ptr<Generator> load_generator(const fs::path& folder, int threads) {
  // The fused graph `trex export --optimize` wrote (checked against the plain one at export) when it is there,
  // as onnxruntime-genai's config points at it; else the plain graph.
  auto pick = [&](const std::string& stem) {
    return fs::is_regular_file(folder / (stem + "-optimized.onnx")) ? stem + "-optimized.onnx" : stem + ".onnx";
  };
  if (fs::is_regular_file(folder / "model.onnx") || fs::is_regular_file(folder / "model-optimized.onnx"))
    return std::make_unique<GeneratorImpl>(std::make_unique<DecoderOnlyModel>(folder, pick("model"), threads), false);
  const bool optimized = fs::is_regular_file(folder / "encoder_model-optimized.onnx") &&
                         fs::is_regular_file(folder / "decoder_model_merged-optimized.onnx");
  if (optimized || (fs::is_regular_file(folder / "encoder_model.onnx") &&
                    fs::is_regular_file(folder / "decoder_model_merged.onnx"))) {
    const std::string suffix = optimized ? "-optimized.onnx" : ".onnx";
    return std::make_unique<GeneratorImpl>(
        std::make_unique<EncoderDecoderModel>(folder, "encoder_model" + suffix, "decoder_model_merged" + suffix, threads),
        true);
  }
  throw InputError(folder.string(), "no model.onnx (decoder-only) or encoder_model.onnx + decoder_model_merged.onnx "
                                    "(encoder-decoder) to generate with");
}

}  // namespace trex::generation
