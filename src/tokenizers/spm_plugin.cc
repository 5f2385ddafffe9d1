// libtrex_spm_plugin.so: libsentencepiece behind the C interface of spm_plugin_api.h. Uses no trex symbols.
#include <sentencepiece_processor.h>

#include <string>
#include <vector>

#include "tokenizers/spm_plugin_api.h"

namespace {

void* load(const char* data, size_t size, TrexSpmStringFn err, void* ctx) {
  try {
    auto* sp = new sentencepiece::SentencePieceProcessor();
    const auto status = sp->LoadFromSerializedProto(std::string(data, size));
    if (!status.ok()) {
      const std::string m(status.message());
      err(ctx, m.data(), m.size());
      delete sp;
      return nullptr;
    }
    return sp;
  } catch (const std::exception& e) {
    err(ctx, e.what(), std::char_traits<char>::length(e.what()));
  } catch (...) {
    err(ctx, "unknown error", 13);
  }
  return nullptr;
}

void free_model(void* m) { delete static_cast<sentencepiece::SentencePieceProcessor*>(m); }

const sentencepiece::SentencePieceProcessor& sp(const void* m) {
  return *static_cast<const sentencepiece::SentencePieceProcessor*>(m);
}

int piece_size(const void* m) { return sp(m).GetPieceSize(); }

void id_to_piece(const void* m, int id, TrexSpmStringFn out, void* ctx) {
  if (id < 0 || id >= sp(m).GetPieceSize()) return out(ctx, "", 0);
  const std::string& p = sp(m).IdToPiece(id);
  out(ctx, p.data(), p.size());
}

int encode(const void* m, const char* text, size_t size, TrexSpmPieceFn piece, TrexSpmStringFn err, void* ctx) {
  try {
    const auto proto = sp(m).EncodeAsImmutableProto(std::string_view(text, size));
    for (const auto& p : proto.pieces()) piece(ctx, p.piece().data(), p.piece().size(), p.id(), p.begin(), p.end());
    return 0;
  } catch (const std::exception& e) {
    err(ctx, e.what(), std::char_traits<char>::length(e.what()));
  } catch (...) {
    err(ctx, "unknown error", 13);
  }
  return 1;
}

void decode_pieces(const void* m, const char* const* pieces, const size_t* lens, size_t n, TrexSpmStringFn out,
                   void* ctx) {
  std::vector<std::string> v;
  v.reserve(n);
  for (size_t i = 0; i < n; ++i) v.emplace_back(pieces[i], lens[i]);
  std::string s;
  try {
    s = sp(m).DecodePieces(v);
  } catch (...) {
    s.clear();
  }
  out(ctx, s.data(), s.size());
}

const TrexSpmApi kApi = {load, free_model, piece_size, id_to_piece, encode, decode_pieces};

}  // namespace

extern "C" __attribute__((visibility("default"))) const TrexSpmApi* trex_spm_api_v1() { return &kApi; }
