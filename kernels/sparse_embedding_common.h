// Pieces shared line for line by the CPU and CUDA bodies of the sparse embedding ops: argument
// checks, the sort-into-segments step (ATen ops, so it runs on either device), and the per-element
// Adam arithmetic (host and device).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>
#include <cstdint>
#include <optional>

namespace freshrec::ops {

// Sorted view of the N lookup positions: order[offsets[s] .. offsets[s+1]) are the positions of
// rows[s], in their original order (stable sort), so every reduction has one fixed order. Every
// tensor is sized by N, not by the number U of distinct rows, and U stays on the device (`count`):
// building it reads nothing back, so a CUDA step never waits for the GPU here. Kernels loop over
// s < *count; the CPU reads count() for free.
struct Segments {
  at::Tensor rows;     // (N) int64: rows[s] for s < U ascending, then kPaddingKey
  at::Tensor offsets;  // (N + 1) int64: valid for s <= U; offsets[U] = non-padding positions
  at::Tensor order;    // (N) int64 positions into the lookup; the padding positions come last
  at::Tensor segment;  // (N) int64 segment of each sorted position (padding: U)
  at::Tensor count;    // () int64 U, on the indices' device
  int64_t host_count() const { return count.item<int64_t>(); }  // a read-back on CUDA
};
// Padding positions sort after every row.
constexpr int64_t kPaddingKey = INT64_MAX;

// Shapes, dtypes and devices of a lookup; with check_range, also every index against [0, num_rows),
// naming the first bad one (a read-back of the bounds on CUDA; nothing is read back without it).
void check_lookup(const char* op, const at::Tensor& indices, const at::Tensor& grad_output, int64_t num_rows,
                  bool check_range = true);
void check_adam_state(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const at::Tensor& row_step, int64_t D, const at::Device& device);
Segments sort_into_segments(const at::Tensor& indices, int64_t padding_idx);

// Each segment cut into pieces of at most `piece` positions, numbered in sorted order (the CUDA
// bodies reduce one piece per partial sum): piece p covers order[begin[p] .. begin[p + 1]); segment
// s owns pieces [first[s], first[s + 1]), and first[U] is the number of pieces of real segments
// (the padding's come after). Sized by N and built without a read-back, like Segments.
struct Pieces {
  at::Tensor begin;  // (N + 1)
  at::Tensor first;  // (N + 1)
};
Pieces make_pieces(const Segments& segments, int64_t piece);


// Adam's scalars for one row: the bias corrections depend on the row's step count.
struct AdamScalars {
  float lr, beta1, beta2, eps, weight_decay;
  bool decoupled;
};

// One element of a row-wise Adam step, in fp32. Same formula as torch.optim.Adam/AdamW:
//   g += wd * w (L2) | w *= 1 - lr * wd (decoupled);  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
//   w -= (lr / (1 - b1^t)) * m / (sqrt(v) / sqrt(1 - b2^t) + eps)
C10_HOST_DEVICE inline void adam_element(float& w, float& m, float& v, float g, const AdamScalars& a,
                                         float step_size, float bias_correction2_sqrt) {
  if (a.weight_decay != 0.f) {
    if (a.decoupled) w *= 1.f - a.lr * a.weight_decay;
    else g += a.weight_decay * w;
  }
  m = a.beta1 * m + (1.f - a.beta1) * g;
  v = a.beta2 * v + (1.f - a.beta2) * g * g;
  w -= step_size * (m / (sqrtf(v) / bias_correction2_sqrt + a.eps));
}

inline AdamScalars make_adam_scalars(double lr, double beta1, double beta2, double eps, double weight_decay,
                                     bool decoupled) {
  TORCH_CHECK(lr >= 0 && beta1 >= 0 && beta1 < 1 && beta2 >= 0 && beta2 < 1 && eps > 0 && weight_decay >= 0,
              "rowwise Adam: bad hyper-parameters lr=", lr, " beta1=", beta1, " beta2=", beta2, " eps=", eps,
              " weight_decay=", weight_decay);
  return {static_cast<float>(lr), static_cast<float>(beta1), static_cast<float>(beta2), static_cast<float>(eps),
          static_cast<float>(weight_decay), decoupled};
}

// step_size = lr / (1 - b1^t) and sqrt(1 - b2^t), computed in double as torch.optim.Adam does.
C10_HOST_DEVICE inline void adam_bias_terms(const AdamScalars& a, int64_t t, float& step_size,
                                            float& bias_correction2_sqrt) {
  const double bc1 = 1.0 - pow(static_cast<double>(a.beta1), static_cast<double>(t));
  const double bc2 = 1.0 - pow(static_cast<double>(a.beta2), static_cast<double>(t));
  step_size = static_cast<float>(a.lr / bc1);
  bias_correction2_sqrt = static_cast<float>(sqrt(bc2));
}

// skip of embedding_backward_adam_: a float32 scalar on `device` (see sparse_embedding.h).
void check_skip(const char* op, const std::optional<at::Tensor>& skip, const at::Device& device);

// Every check of a row-wise Adam entry (rowwise_adam_, embedding_backward_adam_), on CPU and CUDA:
// the lookup (indices, gradients) against the table, the state tensors, the step and the
// hyper-parameters. `float_gradients`: the gradients must be fp32 on every device.
AdamScalars check_rowwise_adam(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                               const at::Tensor& exp_avg_sq, const at::Tensor& row_step, const at::Tensor& indices,
                               const at::Tensor& gradients, int64_t step, double lr, double beta1, double beta2,
                               double eps, double weight_decay, bool decoupled, bool float_gradients,
                               bool check_range = true);

}  // namespace freshrec::ops
