// CPU bodies of the sparse embedding ops (mirrors cuda/sparse_embedding_kernel.cu).
// Parallel over segments; each segment is reduced in its sorted order, so results do not depend on
// the thread count.
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <vector>

#include "kernels/sparse_embedding_common.h"

namespace freshrec::ops {
namespace {

// ---- kernels ---------------------------------------------------------------------------------------

// Sum of grad_output rows order[begin..end) into out (D), in fp32.
void reduce_segment(const float* grad_output, const int64_t* order, int64_t begin, int64_t end, int64_t D, float* out) {
  std::fill(out, out + D, 0.f);
  for (int64_t p = begin; p < end; ++p) {
    const float* g = grad_output + order[p] * D;
    for (int64_t d = 0; d < D; ++d) out[d] += g[d];
  }
}

// Bias terms by the global step, computed once per call; by the row's own count, once per row
// (pow is expensive next to a 64-wide row update).
struct BiasTerms {
  float step_size, bc2_sqrt;
};

void adam_row(float* __restrict__ w, float* __restrict__ m, float* __restrict__ v, const float* __restrict__ g,
              int64_t D, int64_t* row_step, const BiasTerms& global, const AdamScalars& a, bool per_row_step) {
  BiasTerms b = global;
  if (per_row_step) adam_bias_terms(a, ++*row_step, b.step_size, b.bc2_sqrt);
  for (int64_t d = 0; d < D; ++d) adam_element(w[d], m[d], v[d], g[d], a, b.step_size, b.bc2_sqrt);
}

BiasTerms global_bias_terms(const AdamScalars& a, int64_t step) {
  BiasTerms b;
  adam_bias_terms(a, step, b.step_size, b.bc2_sqrt);
  return b;
}

// ---- host entries ----------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> embedding_backward_sparse_cpu(const at::Tensor& indices, const at::Tensor& grad_output,
                                                                 int64_t num_rows, int64_t padding_idx) {
  check_lookup("embedding_backward_sparse", indices, grad_output, num_rows);
  const int64_t D = grad_output.size(1);
  const Segments seg = sort_into_segments(indices, padding_idx);
  const int64_t U = seg.host_count();
  auto rows = seg.rows.narrow(0, 0, U);
  auto row_grads = at::empty({U, D}, grad_output.options().dtype(at::kFloat));
  if (U == 0) return {rows, row_grads};
  const auto grad = grad_output.contiguous();
  const float* g = grad.data_ptr<float>();
  const int64_t* order = seg.order.data_ptr<int64_t>();
  const int64_t* offsets = seg.offsets.data_ptr<int64_t>();
  float* out = row_grads.data_ptr<float>();
  at::parallel_for(0, U, 64, [&](int64_t begin, int64_t end) {
    for (int64_t s = begin; s < end; ++s) reduce_segment(g, order, offsets[s], offsets[s + 1], D, out + s * D);
  });
  return {rows, row_grads};
}

void rowwise_adam_cpu(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                      const at::Tensor& rows, const at::Tensor& row_grads, int64_t step, double lr, double beta1,
                      double beta2, double eps, double weight_decay, bool decoupled, bool per_row_step) {
  const int64_t D = weight.size(1);
  const AdamScalars a = check_rowwise_adam("rowwise_adam_", weight, exp_avg, exp_avg_sq, row_step, rows, row_grads,
                                           step, lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/true);
  if (rows.numel() == 0) return;
  const auto grads = row_grads.contiguous();
  const auto rows_c = rows.contiguous();  // a strided view would be read out of place
  // Rows are updated in parallel: a repeated row would be a data race and a double update.
  const auto sorted = std::get<0>(at::sort(rows_c));
  if (rows_c.numel() > 1) {
    const auto repeated = (sorted.narrow(0, 1, sorted.numel() - 1) == sorted.narrow(0, 0, sorted.numel() - 1)).nonzero();
    TORCH_CHECK(repeated.numel() == 0, "rowwise_adam_: row ", repeated.numel() ? sorted[repeated[0][0]].item<int64_t>() : 0,
                " appears more than once; rows must be distinct (as embedding_backward_sparse returns them)");
  }
  const int64_t* r = rows_c.data_ptr<int64_t>();
  const float* g = grads.data_ptr<float>();
  float *w = weight.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_avg_sq.data_ptr<float>();
  int64_t* steps = row_step.data_ptr<int64_t>();
  const BiasTerms bias = global_bias_terms(a, step);
  at::parallel_for(0, rows.size(0), 64, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t row = r[i];
      adam_row(w + row * D, m + row * D, v + row * D, g + i * D, D, steps + row, bias, a, per_row_step);
    }
  });
}

void embedding_backward_adam_cpu(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                                 const at::Tensor& indices, const at::Tensor& grad_output, int64_t padding_idx,
                                 int64_t step, double lr, double beta1, double beta2, double eps, double weight_decay,
                                 bool decoupled, bool per_row_step, bool /*check_indices: always on the CPU*/,
                                 const std::optional<at::Tensor>& skip) {
  const int64_t D = grad_output.size(1);
  const AdamScalars a =
      check_rowwise_adam("embedding_backward_adam_", weight, exp_avg, exp_avg_sq, row_step, indices, grad_output, step,
                         lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/false);
  check_skip("embedding_backward_adam_", skip, weight.device());
  if (skip && skip->item<float>() != 0.f) return;
  const Segments seg = sort_into_segments(indices, padding_idx);
  const int64_t U = seg.host_count();
  if (U == 0) return;
  const auto grad = grad_output.contiguous();
  const float* g = grad.data_ptr<float>();
  const int64_t *order = seg.order.data_ptr<int64_t>(), *offsets = seg.offsets.data_ptr<int64_t>();
  const int64_t* rows = seg.rows.data_ptr<int64_t>();
  float *w = weight.data_ptr<float>(), *m = exp_avg.data_ptr<float>(), *v = exp_avg_sq.data_ptr<float>();
  int64_t* steps = row_step.data_ptr<int64_t>();
  const BiasTerms bias = global_bias_terms(a, step);
  at::parallel_for(0, U, 64, [&](int64_t begin, int64_t end) {
    std::vector<float> row_grad(D);  // one row's gradient: the only gradient memory of the fused path
    for (int64_t s = begin; s < end; ++s) {
      reduce_segment(g, order, offsets[s], offsets[s + 1], D, row_grad.data());
      const int64_t row = rows[s];
      adam_row(w + row * D, m + row * D, v + row * D, row_grad.data(), D, steps + row, bias, a, per_row_step);
    }
  });
}

}  // namespace
}  // namespace freshrec::ops

TORCH_LIBRARY_IMPL(freshrec, CPU, m) {
  m.impl("embedding_backward_sparse", &freshrec::ops::embedding_backward_sparse_cpu);
  m.impl("rowwise_adam_", &freshrec::ops::rowwise_adam_cpu);
  m.impl("embedding_backward_adam_", &freshrec::ops::embedding_backward_adam_cpu);
}
