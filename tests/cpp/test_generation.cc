// GenerationConfig: generation_config.json read as transformers reads it (eos as an int or a list, early_stopping
// true/false/"never", single-token bad words), mistyped keys refused naming the file and the key, and a folder
// without a model refused with a clear error.
#include <gtest/gtest.h>

#include <fstream>

#include "generation/generate.h"
#include "temp_dir.h"
#include "util/error.h"

namespace {

using trex::generation::GenerationConfig;

void write(const std::filesystem::path& p, const std::string& text) { std::ofstream(p) << text; }

TEST(GenerationConfig, ReadsTheKeysTransformersReads) {
  trex::testing::TempDir d;
  write(d / "generation_config.json",
        R"({"eos_token_id": [2, 7], "pad_token_id": 0, "decoder_start_token_id": 5, "max_length": 40,
            "num_beams": 4, "length_penalty": 0.6, "early_stopping": "never", "bad_words_ids": [[9], [3, 4]],
            "forced_eos_token_id": 2, "do_sample": true, "top_k": 0, "top_p": 0.9, "temperature": 0.7,
            "repetition_penalty": 1.2, "min_new_tokens": 3, "unknown_key": {"x": 1}})");
  const GenerationConfig c = GenerationConfig::from_folder(d.path());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2, 7}));
  EXPECT_EQ(c.pad_token_id, 0);
  EXPECT_EQ(c.decoder_start_token_id, 5);
  EXPECT_EQ(c.max_length, 40);
  EXPECT_EQ(c.max_new_tokens, -1);
  EXPECT_EQ(c.num_beams, 4);
  EXPECT_FLOAT_EQ(c.length_penalty, 0.6f);
  EXPECT_EQ(c.early_stopping, GenerationConfig::EarlyStopping::kNever);
  EXPECT_EQ(c.bad_token_ids, (std::vector<int64_t>{9}));  // multi-token bad words are not applied
  EXPECT_EQ(c.forced_eos_token_id, 2);
  EXPECT_TRUE(c.do_sample);
  EXPECT_EQ(c.top_k, 0);
  EXPECT_FLOAT_EQ(c.top_p, 0.9f);
  EXPECT_FLOAT_EQ(c.temperature, 0.7f);
  EXPECT_FLOAT_EQ(c.repetition_penalty, 1.2f);
  EXPECT_EQ(c.min_new_tokens, 3);
}

TEST(GenerationConfig, EosAsOneIdAndConfigJsonFallback) {
  trex::testing::TempDir d;
  write(d / "config.json", R"({"eos_token_id": 2, "early_stopping": true, "model_type": "bart"})");
  const GenerationConfig c = GenerationConfig::from_folder(d.path());
  EXPECT_EQ(c.eos_token_ids, (std::vector<int64_t>{2}));
  EXPECT_EQ(c.early_stopping, GenerationConfig::EarlyStopping::kTrue);
}

TEST(GenerationConfig, MistypedKeysAreNamed) {
  for (const char* bad : {R"({"eos_token_id": "2"})", R"({"num_beams": 2.5})", R"({"early_stopping": "sometimes"})",
                          R"({"do_sample": 1})", R"({"bad_words_ids": 3})", R"([1, 2])", R"({"eos_token_id": [1, "x"]})"}) {
    trex::testing::TempDir d;
    write(d / "generation_config.json", bad);
    try {
      GenerationConfig::from_folder(d.path());
      ADD_FAILURE() << "accepted " << bad;
    } catch (const trex::InputError& e) {
      EXPECT_NE(std::string(e.what()).find("generation_config.json"), std::string::npos) << e.what();
    }
  }
}

TEST(GenerationConfig, InvalidJsonIsAnInputError) {
  trex::testing::TempDir d;
  write(d / "generation_config.json", "{\"eos_token_id\": ");
  EXPECT_THROW(GenerationConfig::from_folder(d.path()), trex::InputError);
}

TEST(Generator, FolderWithoutModelIsRefused) {
  trex::testing::TempDir d;
  try {
    trex::generation::load_generator(d.path(), 1);
    ADD_FAILURE() << "no error";
  } catch (const trex::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.onnx"), std::string::npos) << e.what();
  }
}

TEST(Generator, ModelThatIsNotAFileIsRefused) {
  trex::testing::TempDir d;
  std::filesystem::create_directory(d / "model.onnx");
  EXPECT_THROW(trex::generation::load_generator(d.path(), 1), trex::InputError);
}

TEST(Generator, ModelSymlinkedOutsideTheFolderIsRefused) {
  trex::testing::TempDir outside, d;
  write(outside / "model.onnx", "not a model");
  std::filesystem::create_symlink(outside / "model.onnx", d / "model.onnx");
  try {
    trex::generation::load_generator(d.path(), 1);
    ADD_FAILURE() << "no error";
  } catch (const trex::InputError& e) {
    EXPECT_NE(std::string(e.what()).find("model.onnx"), std::string::npos) << e.what();
    EXPECT_EQ(std::string(e.what()).find("ONNX Runtime"), std::string::npos) << "reached ONNX Runtime: " << e.what();
  }
}

}  // namespace
