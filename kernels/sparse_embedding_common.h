// Pieces shared line for line by the CPU and CUDA bodies of the sparse embedding ops: argument
// checks, the sort-into-segments step (ATen ops, so it runs on either device), and the per-element
// Adam arithmetic (host and device).
#pragma once

#include <ATen/ATen.h>
#include <c10/macros/Macros.h>

#include <cmath>

namespace freshrec::ops {

// Sorted view of the lookup positions: order[offsets[s] .. offsets[s+1]) are the positions of
// rows[s], in their original order (stable sort), so every reduction has one fixed order.
struct Segments {
  at::Tensor rows;     // (U) int64 ascending
  at::Tensor offsets;  // (U + 1) int64
  at::Tensor order;    // (M) int64 positions into the lookup, M <= N (padding dropped)
  int64_t count() const { return rows.size(0); }
};

void check_lookup(const char* op, const at::Tensor& indices, const at::Tensor& grad_output, int64_t num_rows);
void check_adam_state(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const at::Tensor& row_step, int64_t D, const at::Device& device);
Segments sort_into_segments(const at::Tensor& indices, int64_t padding_idx);


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

// Every check of a row-wise Adam entry (rowwise_adam_, embedding_backward_adam_), on CPU and CUDA:
// the lookup (indices, gradients) against the table, the state tensors, the step and the
// hyper-parameters. `float_gradients`: the gradients must be fp32 on every device.
AdamScalars check_rowwise_adam(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                               const at::Tensor& exp_avg_sq, const at::Tensor& row_step, const at::Tensor& indices,
                               const at::Tensor& gradients, int64_t step, double lr, double beta1, double beta2,
                               double eps, double weight_decay, bool decoupled, bool float_gradients);

}  // namespace freshrec::ops
