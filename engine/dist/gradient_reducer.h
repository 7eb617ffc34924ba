// Sums a model's gradients over a process group while the backward pass still runs, as PyTorch's DDP
// reducer does. The parameters are packed, in reverse order (the order their gradients arrive in), into
// buckets of at most bucket_bytes. A hook on each parameter's gradient accumulator marks it ready once
// its gradient is whole; when every parameter of a bucket and of the buckets before it is ready, the
// bucket's gradients are copied into one flat buffer and its allreduce starts, so the network works
// while the backward pass computes the earlier layers. Buckets start in index order on every rank, the
// order c10d needs. finish() starts what the backward pass did not reach (a parameter without a
// gradient counts zeros, as in a rank whose share was empty), waits for every bucket, and writes the
// sums back into each parameter's .grad.
#pragma once

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <vector>

#include "engine/dist/process_group.h"

namespace freshrec {

class GradientReducer {
 public:
  // `params`: the same tensors in the same order on every rank, each requiring grad.
  GradientReducer(std::vector<torch::Tensor> params, ProcessGroup& group, int64_t bucket_bytes);
  ~GradientReducer();  // removes its hooks
  GradientReducer(const GradientReducer&) = delete;
  GradientReducer& operator=(const GradientReducer&) = delete;

  // After loss.backward(): every parameter's .grad is the sum over ranks. Then ready for the next step.
  void finish();
  int64_t buckets() const { return static_cast<int64_t>(buckets_.size()); }
  // Since the reducer was made: buckets whose allreduce started before the backward pass ended.
  int64_t started_in_backward() const { return started_in_backward_; }

 private:
  struct Bucket {
    std::vector<size_t> params;  // indices into params_
    std::vector<int64_t> offsets;
    torch::Tensor flat;
    size_t ready = 0;
    std::function<void()> wait;  // set once its allreduce started
  };
  void mark_ready(size_t param);
  void start(Bucket& bucket);

  std::vector<torch::Tensor> params_;
  ProcessGroup& group_;
  std::vector<Bucket> buckets_;
  std::vector<size_t> bucket_of_;  // param -> bucket
  std::vector<char> seen_;         // param -> its hook ran this step
  size_t next_ = 0;                // the first bucket not started
  int64_t started_in_backward_ = 0;
  std::vector<std::pair<std::shared_ptr<torch::autograd::Node>, uintptr_t>> hooks_;
};

}  // namespace freshrec
