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

// train.precision: "fp32", "tf32" (TF32 matmuls on a GPU; the same as fp32 on the CPU) or "bf16".
// Sets the process-wide TF32 switches; returns whether steps run under bf16 autocast.
bool configure_precision(const std::string& precision);

// While alive and `enabled`: autocast to bfloat16 on `device` (the forward and loss of a bf16 step;
// weights, gradients and optimizer state stay fp32). Restores the previous state on exit.
class Autocast {
 public:
  Autocast(torch::Device device, bool enabled);
  ~Autocast();
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  c10::DeviceType type_;
  bool enabled_, was_enabled_ = false;
  at::ScalarType was_dtype_ = at::kBFloat16;
};

}  // namespace freshrec
