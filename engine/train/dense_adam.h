// Adam / AdamW for the dense parameters in one fused multi-tensor kernel per step, and a gradient
// clip that never waits for the device.
//
// LibTorch's C++ Adam runs about ten elementwise ops per parameter tensor (two dozen tensors in a
// SASRec: ~250 kernel launches a step on a GPU); ATen's _fused_adam_ / _fused_adamw_ (the kernels
// behind torch.optim.Adam(fused=True), with CPU and CUDA bodies) update every tensor in one pass.
// LibTorch's clip_grad_norm_ returns the norm as a double, i.e. reads it back to the host and stalls
// the GPU every step; clip_grad_norm below keeps it a device tensor.
//
// The state (moments, step counts) and the checkpoint format are LibTorch's Adam/AdamW's own, so
// checkpoints written before or by the unfused optimizer load unchanged. Same update formula as
// torch::optim::Adam; results agree to float rounding, not bit for bit (fused_adam test).
#pragma once

#include <torch/torch.h>

#include <unordered_map>
#include <vector>

namespace freshrec {

// Base: torch::optim::Adam (L2 weight decay) or torch::optim::AdamW (decoupled weight decay).
template <class Base>
class FusedAdamT : public Base {
 public:
  using Base::Base;
  torch::Tensor step(torch::optim::Optimizer::LossClosure closure = nullptr) override;
  // A step guarded on the device: `found_inf` is a float32 scalar on the parameters' device, and when
  // it is 1 the fused kernel leaves parameters and moments untouched (as with torch's GradScaler).
  // The step counts still advance, so their host copies stay exact without a read-back.
  void step_unless(const torch::Tensor& found_inf);

 private:
  void fused_step(const std::optional<torch::Tensor>& found_inf);
  // The step counts as fp32 device scalars, as the fused kernels read them; `value` mirrors the
  // tensor's content on the host, so a count changed by load() is noticed without reading it back.
  struct DeviceStep {
    int64_t value = -1;
    torch::Tensor tensor;
  };
  std::unordered_map<const void*, DeviceStep> device_steps_;
};

using FusedAdam = FusedAdamT<torch::optim::Adam>;
using FusedAdamW = FusedAdamT<torch::optim::AdamW>;

// Scales the gradients of `params` (those that have one) so that their global L2 norm is at most
// `max_norm`, as torch.nn.utils.clip_grad_norm_ does, with multi-tensor ops. Returns the norm before
// clipping as a scalar tensor on the gradients' device (undefined when no parameter has a gradient).
torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& params, double max_norm);
// The global L2 norm of the gradients of `params`, the same way, without scaling them.
torch::Tensor gradient_norm(const std::vector<torch::Tensor>& params);

}  // namespace freshrec
