// util/: output-path rules (never overwrite an input, output folders created and removed on failure),
// the checkpoint buffer list, string helpers.
#include <gtest/gtest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "util/checkpoint_buffers.h"
#include "util/error.h"
#include "util/output_path.h"
#include "util/strings.h"

namespace fs = std::filesystem;
using namespace trex;

namespace {

fs::path temp_dir(const std::string& name) {
  fs::path p = fs::temp_directory_path() / ("trex_util_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p;
}

void touch(const fs::path& p) { std::ofstream(p) << "x"; }

}  // namespace

TEST(Strings, EndsWith) {
  EXPECT_TRUE(ends_with("model.safetensors", ".safetensors"));
  EXPECT_TRUE(ends_with("abc", ""));
  EXPECT_FALSE(ends_with("bc", "abc"));
  EXPECT_TRUE(starts_with("bert.embeddings", "bert."));
  EXPECT_FALSE(starts_with("be", "bert"));
}

TEST(CheckpointBuffers, KnownBuffersOnly) {
  EXPECT_TRUE(is_known_buffer("embeddings.position_ids"));
  EXPECT_TRUE(is_known_buffer("bert.embeddings.token_type_ids"));
  EXPECT_TRUE(is_known_buffer("h.0.attn.bias"));
  EXPECT_TRUE(is_known_buffer("h.0.attn.masked_bias"));
  EXPECT_TRUE(is_known_buffer("model.layers.0.self_attn.rotary_emb.inv_freq"));
  EXPECT_FALSE(is_known_buffer("h.0.attn.c_attn.bias"));  // a learned bias
  EXPECT_FALSE(is_known_buffer("embeddings.position_embeddings.weight"));
  EXPECT_FALSE(is_known_buffer("pooler.dense.weight"));
}

TEST(OutputPath, SameFileThroughDotsSymlinksAndHardLinks) {
  const fs::path d = temp_dir("same");
  touch(d / "a.bin");
  fs::create_directories(d / "sub");
  EXPECT_TRUE(same_file(d / "a.bin", d / "sub" / ".." / "a.bin"));
  EXPECT_TRUE(same_file(d / "a.bin", d / "." / "a.bin"));
  fs::create_symlink(d / "a.bin", d / "link");
  EXPECT_TRUE(same_file(d / "link", d / "a.bin"));
  fs::create_hard_link(d / "a.bin", d / "hard");
  EXPECT_TRUE(same_file(d / "hard", d / "a.bin"));
  EXPECT_FALSE(same_file(d / "a.bin", d / "b.bin"));
  EXPECT_FALSE(same_file(d / "missing1", d / "missing2"));
  EXPECT_TRUE(same_file(d / "missing1", d / "sub" / ".." / "missing1"));
  fs::remove_all(d);
}

TEST(OutputPath, OutputsNeverOverwriteInputs) {
  const fs::path d = temp_dir("inputs");
  for (const char* f : {"config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json",
                        "tokenizer.json", "old.onnx"})
    touch(d / f);
  const auto inputs = checkpoint_input_files(d);
  for (const char* f : {"config.json", "model.safetensors", "pytorch_model.bin", "model.safetensors.index.json"})
    EXPECT_THROW(check_outputs_not_inputs({d / "out.onnx", d / f}, inputs), UsageError) << f;
  EXPECT_NO_THROW(check_outputs_not_inputs({d / "old.onnx", d / "old.onnx.data"}, inputs));
  try {
    check_outputs_not_inputs({d / "." / "config.json"}, inputs);
    FAIL();
  } catch (const UsageError& e) {
    EXPECT_NE(std::string(e.what()).find("overwrite"), std::string::npos) << e.what();
  }
  // Two outputs that are one file (e.g. --report naming the model).
  EXPECT_THROW(check_outputs_not_inputs({d / "m.onnx", d / "m.onnx"}, {}), UsageError);
  fs::remove_all(d);
}

TEST(OutputPath, FoldersCreatedAndRemovedUnlessKept) {
  const fs::path d = temp_dir("folders");
  {
    OutputFolders f;
    f.create_parents_of(d / "a" / "b" / "m.onnx");
    EXPECT_TRUE(fs::is_directory(d / "a" / "b"));
  }
  EXPECT_FALSE(fs::exists(d / "a"));  // not kept: removed
  {
    OutputFolders f;
    f.create_parents_of(d / "a" / "b" / "m.onnx");
    touch(d / "a" / "user-file");  // a folder that is not empty is never removed
  }
  EXPECT_TRUE(fs::exists(d / "a" / "user-file"));
  EXPECT_FALSE(fs::exists(d / "a" / "b"));
  {
    OutputFolders f;
    f.create_parents_of(d / "k" / "m.onnx");
    f.keep();
  }
  EXPECT_TRUE(fs::is_directory(d / "k"));
  touch(d / "file");
  OutputFolders f;
  EXPECT_THROW(f.create_parents_of(d / "file" / "x" / "m.onnx"), OutputError);
  fs::remove_all(d);
}
