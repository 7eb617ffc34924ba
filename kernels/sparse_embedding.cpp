// Schemas of the sparse embedding ops, their typed wrappers, and the checks and segment sort that
// the CPU and CUDA bodies share.
#include "kernels/sparse_embedding.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/library.h>

#include "kernels/sparse_embedding_common.h"

namespace freshrec::ops {

void check_lookup(const char* op, const at::Tensor& indices, const at::Tensor& grad_output, int64_t num_rows,
                  bool check_range) {
  TORCH_CHECK(indices.dim() == 1, op, ": indices must be 1-D, got shape ", indices.sizes());
  TORCH_CHECK(indices.scalar_type() == at::kLong, op, ": indices must be int64, got ", indices.scalar_type());
  TORCH_CHECK(grad_output.dim() == 2, op, ": grad_output must be (N, D), got shape ", grad_output.sizes());
  TORCH_CHECK(grad_output.size(0) == indices.size(0), op, ": grad_output has ", grad_output.size(0),
              " rows but there are ", indices.size(0), " indices");
  TORCH_CHECK(grad_output.device() == indices.device(), op, ": indices are on ", indices.device(),
              " but grad_output is on ", grad_output.device());
  TORCH_CHECK(grad_output.scalar_type() == at::kFloat ||
                  (grad_output.is_cuda() && (grad_output.scalar_type() == at::kHalf ||
                                             grad_output.scalar_type() == at::kBFloat16)),
              op, ": grad_output must be float32 (or float16/bfloat16 on CUDA), got ", grad_output.scalar_type(),
              " on ", grad_output.device());
  TORCH_CHECK(num_rows > 0, op, ": num_rows must be positive, got ", num_rows);
  // On the CPU the range check costs one pass and no wait, so it always runs.
  if (indices.numel() == 0 || (!check_range && indices.is_cuda())) return;
  // One host sync for the bounds; the offending value and its position are looked up only on error.
  const auto [low, high] = at::aminmax(indices);
  const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
  if (lo < 0 || hi >= num_rows) {
    const auto bad = at::nonzero((indices < 0).logical_or(indices >= num_rows)).select(1, 0)[0].item<int64_t>();
    TORCH_CHECK(false, op, ": index ", indices[bad].item<int64_t>(), " at position ", bad, " is out of range [0, ",
                num_rows, ")");
  }
}

void check_adam_state(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                      const at::Tensor& exp_avg_sq, const at::Tensor& row_step, int64_t D, const at::Device& device) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == D, op, ": weight must be (rows, ", D, "), got ", weight.sizes());
  for (const auto* t : {&weight, &exp_avg, &exp_avg_sq}) {
    TORCH_CHECK(t->scalar_type() == at::kFloat, op, ": weight and moments must be float32, got ", t->scalar_type());
    TORCH_CHECK(t->sizes() == weight.sizes(), op, ": moments must have the weight's shape ", weight.sizes(),
                ", got ", t->sizes());
    TORCH_CHECK(t->device() == device, op, ": weight and moments must be on ", device, ", got ", t->device());
    TORCH_CHECK(t->is_contiguous(), op, ": weight and moments must be contiguous (updated in place)");
  }
  TORCH_CHECK(row_step.dim() == 1 && row_step.size(0) == weight.size(0) && row_step.scalar_type() == at::kLong &&
                  row_step.device() == device && row_step.is_contiguous(),
              op, ": row_step must be a contiguous int64 (", weight.size(0), ") tensor on ", device, ", got ",
              row_step.scalar_type(), " ", row_step.sizes(), " on ", row_step.device());
}

void check_skip(const char* op, const std::optional<at::Tensor>& skip, const at::Device& device) {
  if (!skip) return;
  TORCH_CHECK(skip->numel() == 1 && skip->scalar_type() == at::kFloat && skip->device() == device, op,
              ": skip must be one float32 value on ", device, ", got ", skip->scalar_type(), " ", skip->sizes(), " on ",
              skip->device());
}

AdamScalars check_rowwise_adam(const char* op, const at::Tensor& weight, const at::Tensor& exp_avg,
                               const at::Tensor& exp_avg_sq, const at::Tensor& row_step, const at::Tensor& indices,
                               const at::Tensor& gradients, int64_t step, double lr, double beta1, double beta2,
                               double eps, double weight_decay, bool decoupled, bool float_gradients,
                               bool check_range) {
  check_lookup(op, indices, gradients, weight.size(0), check_range);
  TORCH_CHECK(!float_gradients || gradients.scalar_type() == at::kFloat, op, ": gradients must be float32, got ",
              gradients.scalar_type());
  check_adam_state(op, weight, exp_avg, exp_avg_sq, row_step, gradients.size(1), indices.device());
  TORCH_CHECK(step >= 1, op, ": step must be >= 1, got ", step);
  return make_adam_scalars(lr, beta1, beta2, eps, weight_decay, decoupled);
}

Segments sort_into_segments(const at::Tensor& indices, int64_t padding_idx) {
  const int64_t N = indices.size(0);
  const auto options = indices.options();
  const auto padding = at::full({}, kPaddingKey, options);
  const auto keys = padding_idx >= 0 ? at::where(indices == padding_idx, padding, indices) : indices;
  const auto [sorted, order] = at::sort(keys, /*stable=*/true, /*dim=*/0, /*descending=*/false);
  Segments s;
  s.order = order;
  if (N == 0) {
    s.rows = s.segment = at::empty({0}, options);
    s.offsets = at::zeros({1}, options);
    s.count = at::zeros({}, options);
    return s;
  }
  // A segment starts where the sorted key changes; its id is the count of starts up to it.
  auto starts = at::ones({N}, options.dtype(at::kBool));
  if (N > 1) starts.narrow(0, 1, N - 1).copy_(sorted.narrow(0, 1, N - 1) != sorted.narrow(0, 0, N - 1));
  s.segment = starts.cumsum(0) - 1;
  s.count = starts.logical_and(sorted != kPaddingKey).sum();
  // Scatters by segment id: every position of a segment writes the same row; its start is the least
  // position (a min, so the order of the writes does not matter). offsets[U] is where the padding
  // starts (N without padding); the entries after it stay N.
  s.rows = at::full({N}, kPaddingKey, options).scatter_(0, s.segment, sorted);
  s.offsets = at::full({N + 1}, N, options)
                  .scatter_reduce_(0, s.segment, at::arange(N, options), "amin", /*include_self=*/true);
  return s;
}

Pieces make_pieces(const Segments& seg, int64_t piece_size) {
  const int64_t N = seg.order.size(0);
  const auto options = seg.order.options();
  Pieces p;
  if (N == 0) {
    p.begin = p.first = at::zeros({1}, options);
    return p;
  }
  const auto position = at::arange(N, options);
  const auto within = position - seg.offsets.index_select(0, seg.segment);  // position inside its segment
  const auto piece = (within.remainder(piece_size) == 0).cumsum(0) - 1;
  // Pieces tile the sorted positions, so a piece ends where the next begins (the last at N).
  p.begin = at::full({N + 1}, N, options).scatter_reduce_(0, piece, position, "amin", /*include_self=*/true);
  // Entries past the last segment (the padding's, or none) hold the total piece count.
  p.first = (piece.narrow(0, N - 1, 1) + 1)
                .expand({N + 1})
                .clone()
                .scatter_reduce_(0, seg.segment, piece, "amin", /*include_self=*/true);
  return p;
}

// ---- typed wrappers through the dispatcher -------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> embedding_backward_sparse(const at::Tensor& indices, const at::Tensor& grad_output,
                                                             int64_t num_rows, int64_t padding_idx) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("freshrec::embedding_backward_sparse", "")
                       .typed<std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  return op.call(indices, grad_output, num_rows, padding_idx);
}

void rowwise_adam_(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                   const at::Tensor& rows, const at::Tensor& row_grads, int64_t step, const RowwiseAdamOptions& o) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("freshrec::rowwise_adam_", "")
                       .typed<void(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, double, double, double, double, double, bool, bool)>();
  op.call(weight, exp_avg, exp_avg_sq, row_step, rows, row_grads, step, o.lr, o.beta1, o.beta2, o.eps,
          o.weight_decay, o.decoupled_weight_decay, o.per_row_step);
}

void embedding_backward_adam_(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                              const at::Tensor& indices, const at::Tensor& grad_output, int64_t padding_idx,
                              int64_t step, const RowwiseAdamOptions& o, bool check_indices,
                              const std::optional<at::Tensor>& skip) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("freshrec::embedding_backward_adam_", "")
                       .typed<void(at::Tensor&, at::Tensor&, at::Tensor&, at::Tensor&, const at::Tensor&,
                                   const at::Tensor&, int64_t, int64_t, double, double, double, double, double, bool,
                                   bool, bool, const std::optional<at::Tensor>&)>();
  op.call(weight, exp_avg, exp_avg_sq, row_step, indices, grad_output, padding_idx, step, o.lr, o.beta1, o.beta2,
          o.eps, o.weight_decay, o.decoupled_weight_decay, o.per_row_step, check_indices, skip);
}

}  // namespace freshrec::ops

TORCH_LIBRARY(freshrec, m) {
  m.def("embedding_backward_sparse(Tensor indices, Tensor grad_output, int num_rows, int padding_idx) -> (Tensor, Tensor)");
  m.def("rowwise_adam_(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) row_step, "
        "Tensor rows, Tensor row_grads, int step, float lr, float beta1, float beta2, float eps, float weight_decay, "
        "bool decoupled_weight_decay, bool per_row_step) -> ()");
  m.def("embedding_backward_adam_(Tensor(a!) weight, Tensor(b!) exp_avg, Tensor(c!) exp_avg_sq, Tensor(d!) row_step, "
        "Tensor indices, Tensor grad_output, int padding_idx, int step, float lr, float beta1, float beta2, float eps, "
        "float weight_decay, bool decoupled_weight_decay, bool per_row_step, bool check_indices=True, "
        "Tensor? skip=None) -> ()");
}
