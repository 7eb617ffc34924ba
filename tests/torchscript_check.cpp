// A program that links LibTorch alone (none of freshrec's code or ops), loads an exported model and
// prints its recommendations as "id score" lines: proof that an export needs nothing else.
//   torchscript_check MODEL K ID [ID...]
#include <torch/script.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::cerr << "usage: torchscript_check MODEL K ID [ID...]\n";
    return 2;
  }
  try {
    auto module = torch::jit::load(argv[1]);
    module.eval();
    c10::List<int64_t> history;
    for (int i = 3; i < argc; ++i) history.push_back(std::stoll(argv[i]));
    c10::List<c10::List<int64_t>> batch;
    batch.push_back(history);
    auto out = module.get_method("recommend")({batch, static_cast<int64_t>(std::stoll(argv[2]))}).toTuple();
    auto ids = out->elements()[0].toTensor(), scores = out->elements()[1].toTensor();
    for (int64_t j = 0; j < ids.size(1); ++j)
      std::printf("%lld %.9g\n", static_cast<long long>(ids[0][j].item<int64_t>()), scores[0][j].item<double>());
  } catch (const std::exception& e) {
    std::cerr << "torchscript_check: " << e.what() << "\n";
    return 1;
  }
  return 0;
}
