// The C interface of libtrex_spm_plugin.so (src/tokenizers/spm_plugin.cc), the small module that wraps Debian's
// libsentencepiece. That library carries its own copy of protobuf-lite (3.14) whose symbols clash with the system
// libprotobuf (3.21) trex's ONNX classes use, so it is never linked into trex: trex dlopen()s this module with
// RTLD_DEEPBIND (libsentencepiece then binds to its own protobuf) on the first SentencePiece folder it reads.
// No C++ types or exceptions cross this interface.
#pragma once

#include <stddef.h>
#include <stdint.h>

extern "C" {

typedef void (*TrexSpmStringFn)(void* ctx, const char* s, size_t len);
typedef void (*TrexSpmPieceFn)(void* ctx, const char* piece, size_t len, uint32_t id, uint32_t begin, uint32_t end);

struct TrexSpmApi {
  // A model from the bytes of a .model file; NULL with the reason passed to `err` when it is not one.
  void* (*load)(const char* data, size_t size, TrexSpmStringFn err, void* ctx);
  void (*free)(void* model);
  int (*piece_size)(const void* model);
  void (*id_to_piece)(const void* model, int id, TrexSpmStringFn out, void* ctx);
  // Pieces of `text` with their ids and byte spans in `text`; 0 on success, else the reason passed to `err`.
  int (*encode)(const void* model, const char* text, size_t size, TrexSpmPieceFn piece, TrexSpmStringFn err,
                void* ctx);
  void (*decode_pieces)(const void* model, const char* const* pieces, const size_t* lens, size_t n,
                        TrexSpmStringFn out, void* ctx);
};

#define TREX_SPM_PLUGIN_ENTRY "trex_spm_api_v1"
typedef const TrexSpmApi* (*TrexSpmEntryFn)(void);

}  // extern "C"
