// Process-wide runtime settings: the compute device and CPU threads.
#pragma once

#include <torch/torch.h>

#include <string>
#include <vector>

namespace freshrec {

// "auto" picks CUDA when a GPU is present, else the CPU; "cuda" without a GPU is an error.
torch::Device select_device(const std::string& name);

// An int64 tensor holding a copy of `values`, shaped `shape`, on `device` (on a GPU, copied
// asynchronously: the call never waits for the device).
torch::Tensor long_tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape, torch::Device device);

// Intra-op threads: `threads` > 0, or every core (LibTorch may default to fewer).
void configure_threads(int64_t threads);

}  // namespace freshrec
