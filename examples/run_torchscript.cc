// Loads a TorchScript file written by `trex export --format torchscript` with torch::jit::load and runs it.
//
//   trex_example_torchscript MODEL.pt [--ids 101,2023,102 ...] [--mask 1,1,1 ...] [--types 0,0,0 ...]
//                            [--threads N] [--raw OUT_PREFIX]
//
// Each --ids/--mask/--types flag adds one row of the batch (rows of equal length; pad with --mask 0).
// Without --ids a 2×8 example batch is used. Prints the model's description (trex.json, stored in the file), the
// output shapes and the first values; --raw writes every output as OUT_PREFIX<i>.bin (little-endian float32,
// row-major) next to OUT_PREFIX<i>.shape (space-separated dims), which tests read back.
#include <ATen/Parallel.h>
#include <torch/script.h>

#include <cstdint>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::vector<int64_t> parse_row(const std::string& s) {
  std::vector<int64_t> out;
  std::stringstream ss(s);
  std::string item;
  while (std::getline(ss, item, ',')) out.push_back(std::stoll(item));
  return out;
}

torch::Tensor to_batch(const std::vector<std::vector<int64_t>>& rows, const char* what) {
  const int64_t b = static_cast<int64_t>(rows.size());
  const int64_t s = static_cast<int64_t>(rows.at(0).size());
  torch::Tensor t = torch::empty({b, s}, torch::kInt64);
  for (int64_t i = 0; i < b; ++i) {
    if (static_cast<int64_t>(rows[i].size()) != s) throw std::runtime_error(std::string(what) + ": rows differ in length");
    for (int64_t j = 0; j < s; ++j) t[i][j] = rows[i][j];
  }
  return t;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::cerr << "usage: " << argv[0] << " MODEL.pt [--ids a,b,c]... [--mask 1,1,0]... [--types 0,0,1]... "
              << "[--threads N] [--raw OUT_PREFIX]\n";
    return 1;
  }
  std::vector<std::vector<int64_t>> ids, mask, types;
  std::string raw;
  for (int i = 2; i < argc; ++i) {
    const std::string a = argv[i];
    if (i + 1 >= argc) {
      std::cerr << "missing value after " << a << "\n";
      return 1;
    }
    const std::string v = argv[++i];
    if (a == "--ids") ids.push_back(parse_row(v));
    else if (a == "--mask") mask.push_back(parse_row(v));
    else if (a == "--types") types.push_back(parse_row(v));
    else if (a == "--threads") at::set_num_threads(std::stoi(v));
    else if (a == "--raw") raw = v;
    else {
      std::cerr << "unknown option " << a << "\n";
      return 1;
    }
  }
  try {
    torch::jit::ExtraFilesMap extra{{"trex.json", ""}};
    torch::jit::Module model = torch::jit::load(argv[1], torch::kCPU, extra);
    model.eval();
    std::cout << "model: " << argv[1] << "\n" << extra["trex.json"] << "\n";

    if (ids.empty()) {
      ids = {{2, 17, 33, 45, 12, 9, 71, 3}, {2, 40, 41, 3, 0, 0, 0, 0}};
      mask = {{1, 1, 1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 0, 0, 0, 0}};
    }
    std::vector<torch::jit::IValue> inputs{to_batch(ids, "--ids")};
    if (!mask.empty() || !types.empty()) inputs.emplace_back(mask.empty() ? torch::jit::IValue() : to_batch(mask, "--mask"));
    if (!types.empty()) inputs.emplace_back(to_batch(types, "--types"));

    torch::NoGradGuard no_grad;
    const auto result = model.forward(inputs).toTuple();
    for (size_t i = 0; i < result->elements().size(); ++i) {
      const torch::Tensor t = result->elements()[i].toTensor().contiguous();
      std::cout << "output " << i << ": shape " << t.sizes() << ", first values";
      const float* v = t.data_ptr<float>();
      for (int64_t j = 0; j < std::min<int64_t>(5, t.numel()); ++j) std::cout << " " << v[j];
      std::cout << "\n";
      if (!raw.empty()) {
        std::ofstream bin(raw + std::to_string(i) + ".bin", std::ios::binary);
        bin.write(static_cast<const char*>(t.data_ptr()), static_cast<std::streamsize>(t.numel() * sizeof(float)));
        std::ofstream shape(raw + std::to_string(i) + ".shape");
        for (auto d : t.sizes()) shape << d << " ";
        if (!bin || !shape) throw std::runtime_error("cannot write " + raw + std::to_string(i) + ".*");
      }
    }
  } catch (const std::exception& e) {
    std::cerr << "error: " << e.what() << "\n";
    return 2;
  }
  return 0;
}
