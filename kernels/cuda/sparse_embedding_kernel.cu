// CUDA bodies of the sparse embedding ops (mirrors cpu/sparse_embedding_kernel.cpp).
// Sort -> segments -> pieces of at most kPiece positions inside a segment -> one fp32 partial sum per
// piece -> each segment sums its pieces in order. A very popular row becomes many pieces reduced in
// parallel, so long runs do not serialise the kernel, and every sum has a fixed order: no float
// atomics, bit-identical repeats.
//
// Nothing is read back to the host on the fused path (embedding_backward_adam_ with check_indices
// off): segments and pieces are sized by the lookup count N, their true counts stay in device
// memory, and the kernels loop over them grid-stride, so a training step is queued without waiting
// for the GPU. embedding_backward_sparse reads U back once: its output has U rows.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <algorithm>

#include "kernels/sparse_embedding_common.h"

namespace freshrec::ops {
namespace {

constexpr int64_t kPiece = 32;  // positions per partial sum (make_pieces)
constexpr int kThreads = 128;   // threads per block, spread over the embedding dimension

// ---- CUDA kernels ------------------------------------------------------------------------------------

// partials[p, :] = sum of grad_output[order[q], :] for q in [piece_begin[p], piece_begin[p + 1]), in
// fp32, for the pieces of the real segments: p < first_piece[*count]. Grid-stride over pieces (x),
// blocks over D (y); the (N, D) gradient rows are read coalesced along D.
template <typename scalar_t>
__global__ void piece_sums_kernel(const scalar_t* __restrict__ grad_output, const int64_t* __restrict__ order,
                                  const int64_t* __restrict__ piece_begin, const int64_t* __restrict__ first_piece,
                                  const int64_t* __restrict__ count, const float* __restrict__ skip, int64_t D,
                                  float* __restrict__ partials) {
  if (skip && *skip != 0.f) return;
  const int64_t pieces = first_piece[*count];
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t p = blockIdx.x; p < pieces; p += gridDim.x) {
    float sum = 0.f;
    for (int64_t q = piece_begin[p]; q < piece_begin[p + 1]; ++q) sum += static_cast<float>(grad_output[order[q] * D + d]);
    partials[p * D + d] = sum;
  }
}

// row_grads[s, :] = sum of the segment's pieces, in piece order, for s < *count.
__global__ void segment_sums_kernel(const float* __restrict__ partials, const int64_t* __restrict__ first_piece,
                                    const int64_t* __restrict__ count, int64_t D, float* __restrict__ row_grads) {
  const int64_t segments = *count;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {
    float sum = 0.f;
    for (int64_t p = first_piece[s]; p < first_piece[s + 1]; ++p) sum += partials[p * D + d];
    row_grads[s * D + d] = sum;
  }
}

// Adam on row rows[s], s < *count, with the gradient summed from its pieces. A block owns a segment
// at a time (so the row's step counter has one writer); threads stride over D.
__global__ void segment_adam_kernel(const float* __restrict__ partials, const int64_t* __restrict__ first_piece,
                                    const int64_t* __restrict__ rows, const int64_t* __restrict__ count,
                                    int64_t num_rows, int64_t D, float* __restrict__ weight,
                                    float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                    int64_t* __restrict__ row_step, int64_t step, AdamScalars a, bool per_row_step,
                                    const float* __restrict__ skip) {
  if (skip && *skip != 0.f) return;  // the guarded step was skipped: nothing changes
  const int64_t segments = *count;
  for (int64_t s = blockIdx.x; s < segments; s += gridDim.x) {  // the same trip count for every thread
    const int64_t row = rows[s];
    CUDA_KERNEL_ASSERT(row >= 0 && row < num_rows && "freshrec: a sparse-embedding index is out of range");
    const int64_t t = per_row_step ? row_step[row] + 1 : step;
    float step_size, bc2_sqrt;
    adam_bias_terms(a, t, step_size, bc2_sqrt);
    for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
      float g = 0.f;
      for (int64_t p = first_piece[s]; p < first_piece[s + 1]; ++p) g += partials[p * D + d];
      const int64_t i = row * D + d;
      adam_element(weight[i], exp_avg[i], exp_avg_sq[i], g, a, step_size, bc2_sqrt);
    }
    __syncthreads();  // every thread has read the old count before it changes
    if (per_row_step && threadIdx.x == 0) row_step[row] = t;
  }
}

// ---- kernel launchers --------------------------------------------------------------------------------

// Blocks for a grid-stride loop over at most `upper` items: enough to fill the GPU, never more than
// there can be work for.
unsigned grid_for(int64_t upper) {
  const int64_t fill = static_cast<int64_t>(at::cuda::getCurrentDeviceProperties()->multiProcessorCount) *
                       (2048 / kThreads);
  return static_cast<unsigned>(std::max<int64_t>(1, std::min(upper, fill)));
}

at::Tensor piece_sums(const at::Tensor& grad_output, const Segments& seg, const Pieces& pieces,
                      const float* skip = nullptr) {
  const int64_t N = seg.order.size(0), D = grad_output.size(1);
  auto partials = at::empty({N, D}, grad_output.options().dtype(at::kFloat));  // the first pieces are written
  const dim3 grid(grid_for(N), static_cast<unsigned>((D + kThreads - 1) / kThreads));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "piece_sums", [&] {
    piece_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad_output.data_ptr<scalar_t>(), seg.order.data_ptr<int64_t>(), pieces.begin.data_ptr<int64_t>(),
        pieces.first.data_ptr<int64_t>(), seg.count.data_ptr<int64_t>(), skip, D, partials.data_ptr<float>());
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partials;
}

// ---- host entries ------------------------------------------------------------------------------------

std::tuple<at::Tensor, at::Tensor> embedding_backward_sparse_cuda(const at::Tensor& indices,
                                                                  const at::Tensor& grad_output, int64_t num_rows,
                                                                  int64_t padding_idx) {
  check_lookup("embedding_backward_sparse", indices, grad_output, num_rows);
  const c10::cuda::CUDAGuard guard(indices.device());
  const int64_t D = grad_output.size(1);
  const Segments seg = sort_into_segments(indices, padding_idx);
  const int64_t U = seg.host_count();  // the output's size: this op's one read-back
  auto rows = seg.rows.narrow(0, 0, U);
  auto row_grads = at::empty({U, D}, grad_output.options().dtype(at::kFloat));
  if (U == 0 || D == 0) return {rows, row_grads};
  const auto grad = grad_output.contiguous();
  const Pieces pieces = make_pieces(seg, kPiece);
  const auto partials = piece_sums(grad, seg, pieces);
  const dim3 grid(grid_for(U), static_cast<unsigned>((D + kThreads - 1) / kThreads));
  segment_sums_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<float>(), pieces.first.data_ptr<int64_t>(), seg.count.data_ptr<int64_t>(), D,
      row_grads.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {rows, row_grads};
}

void rowwise_adam_cuda(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                       const at::Tensor& rows, const at::Tensor& row_grads, int64_t step, double lr, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled, bool per_row_step) {
  const int64_t D = weight.size(1);
  const AdamScalars a = check_rowwise_adam("rowwise_adam_", weight, exp_avg, exp_avg_sq, row_step, rows, row_grads,
                                           step, lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/true);
  const c10::cuda::CUDAGuard guard(weight.device());
  const int64_t U = rows.numel();
  if (U == 0) return;
  const auto grads = row_grads.contiguous();
  const auto rows_c = rows.contiguous();  // a strided view would be read out of place
  // Each row is its own one-piece segment.
  const auto first_piece = at::arange(U + 1, rows.options());
  const auto count = at::full({}, U, rows.options());
  segment_adam_kernel<<<grid_for(U), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grads.data_ptr<float>(), first_piece.data_ptr<int64_t>(), rows_c.data_ptr<int64_t>(), count.data_ptr<int64_t>(),
      weight.size(0), D, weight.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
      row_step.data_ptr<int64_t>(), step, a, per_row_step, /*skip=*/nullptr);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void embedding_backward_adam_cuda(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                  at::Tensor& row_step, const at::Tensor& indices, const at::Tensor& grad_output,
                                  int64_t padding_idx, int64_t step, double lr, double beta1, double beta2, double eps,
                                  double weight_decay, bool decoupled, bool per_row_step, bool check_indices,
                                  const std::optional<at::Tensor>& skip) {
  const int64_t N = indices.size(0), D = grad_output.size(1);
  const AdamScalars a =
      check_rowwise_adam("embedding_backward_adam_", weight, exp_avg, exp_avg_sq, row_step, indices, grad_output, step,
                         lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/false, check_indices);
  check_skip("embedding_backward_adam_", skip, weight.device());
  const float* skip_flag = skip ? skip->data_ptr<float>() : nullptr;
  const c10::cuda::CUDAGuard guard(weight.device());
  if (N == 0 || D == 0) return;
  const Segments seg = sort_into_segments(indices, padding_idx);
  const auto grad = grad_output.contiguous();
  const Pieces pieces = make_pieces(seg, kPiece);
  const auto partials = piece_sums(grad, seg, pieces, skip_flag);
  segment_adam_kernel<<<grid_for(N), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<float>(), pieces.first.data_ptr<int64_t>(), seg.rows.data_ptr<int64_t>(),
      seg.count.data_ptr<int64_t>(), weight.size(0), D, weight.data_ptr<float>(), exp_avg.data_ptr<float>(),
      exp_avg_sq.data_ptr<float>(), row_step.data_ptr<int64_t>(), step, a, per_row_step, skip_flag);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace freshrec::ops

TORCH_LIBRARY_IMPL(freshrec, CUDA, m) {
  m.impl("embedding_backward_sparse", &freshrec::ops::embedding_backward_sparse_cuda);
  m.impl("rowwise_adam_", &freshrec::ops::rowwise_adam_cuda);
  m.impl("embedding_backward_adam_", &freshrec::ops::embedding_backward_adam_cuda);
}
