// CUDA bodies of the sparse embedding ops (mirrors cpu/sparse_embedding_kernel.cpp).
// Sort -> segments -> fixed-size chunks of at most kChunk positions inside a segment -> one fp32
// partial sum per chunk -> each segment sums its chunks in order. A very popular row becomes many
// chunks reduced in parallel, so long runs do not serialise the kernel, and every sum has a fixed
// order: no float atomics, bit-identical repeats.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "kernels/sparse_embedding_common.h"

namespace freshrec::ops {
namespace {

constexpr int64_t kChunk = 32;   // positions per partial sum
constexpr int kThreads = 128;    // threads per block, spread over the embedding dimension

// ---- CUDA kernels ------------------------------------------------------------------------------------

// partials[c, :] = sum of grad_output[order[p], :] for p in [chunk_begin[c], chunk_end[c]), in fp32.
// grid (chunks, ceil(D / kThreads)); (B*T, D) gradient rows read coalesced along D.
template <typename scalar_t>
__global__ void chunk_partial_sums_kernel(const scalar_t* __restrict__ grad_output, const int64_t* __restrict__ order,
                                          const int64_t* __restrict__ chunk_begin,
                                          const int64_t* __restrict__ chunk_end, int64_t D,
                                          float* __restrict__ partials) {
  const int64_t chunk = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float sum = 0.f;
  for (int64_t p = chunk_begin[chunk]; p < chunk_end[chunk]; ++p)
    sum += static_cast<float>(grad_output[order[p] * D + d]);
  partials[chunk * D + d] = sum;
}

// row_grads[s, :] = sum over the segment's chunks, in chunk order. grid (U, ceil(D / kThreads)).
__global__ void segment_sums_kernel(const float* __restrict__ partials, const int64_t* __restrict__ segment_chunks,
                                    int64_t D, float* __restrict__ row_grads) {
  const int64_t s = blockIdx.x;
  const int64_t d = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (d >= D) return;
  float sum = 0.f;
  for (int64_t c = segment_chunks[s]; c < segment_chunks[s + 1]; ++c) sum += partials[c * D + d];
  row_grads[s * D + d] = sum;
}

// Adam on row rows[s] with the gradient summed from its chunks. One block per segment (the block
// owns the row, so the row's step counter has one writer); threads stride over D.
__global__ void segment_adam_kernel(const float* __restrict__ partials, const int64_t* __restrict__ segment_chunks,
                                    const int64_t* __restrict__ rows, int64_t D, float* __restrict__ weight,
                                    float* __restrict__ exp_avg, float* __restrict__ exp_avg_sq,
                                    int64_t* __restrict__ row_step, int64_t step, AdamScalars a, bool per_row_step) {
  const int64_t s = blockIdx.x;
  const int64_t row = rows[s];
  const int64_t t = per_row_step ? row_step[row] + 1 : step;
  float step_size, bc2_sqrt;
  adam_bias_terms(a, t, step_size, bc2_sqrt);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float g = 0.f;
    for (int64_t c = segment_chunks[s]; c < segment_chunks[s + 1]; ++c) g += partials[c * D + d];
    const int64_t i = row * D + d;
    adam_element(weight[i], exp_avg[i], exp_avg_sq[i], g, a, step_size, bc2_sqrt);
  }
  __syncthreads();  // every thread has read the old count before it changes
  if (per_row_step && threadIdx.x == 0) row_step[row] = t;
}

// ---- kernel launchers --------------------------------------------------------------------------------

// Chunks of at most kChunk positions, none crossing a segment boundary.
struct Chunks {
  at::Tensor begin, end;      // (C) position ranges into Segments::order
  at::Tensor segment_chunks;  // (U + 1) chunk offsets per segment
  int64_t count = 0;
};

Chunks make_chunks(const Segments& seg) {
  Chunks c;
  const auto counts = seg.offsets.narrow(0, 1, seg.count()) - seg.offsets.narrow(0, 0, seg.count());
  const auto per_segment = (counts + (kChunk - 1)).floor_divide(kChunk);
  c.segment_chunks = at::cat({at::zeros({1}, per_segment.options()), per_segment.cumsum(0)});
  c.count = c.segment_chunks[-1].item<int64_t>();
  const auto segment_of_chunk =
      at::repeat_interleave(at::arange(seg.count(), per_segment.options()), per_segment, /*dim=*/0, c.count);
  const auto local = at::arange(c.count, per_segment.options()) - c.segment_chunks.index_select(0, segment_of_chunk);
  c.begin = seg.offsets.index_select(0, segment_of_chunk) + local * kChunk;
  c.end = at::minimum(c.begin + kChunk, seg.offsets.index_select(0, segment_of_chunk + 1));
  return c;
}

at::Tensor chunk_partial_sums(const at::Tensor& grad_output, const Segments& seg, const Chunks& chunks) {
  const int64_t D = grad_output.size(1);
  auto partials = at::empty({chunks.count, D}, grad_output.options().dtype(at::kFloat));
  const dim3 grid(static_cast<unsigned>(chunks.count), static_cast<unsigned>((D + kThreads - 1) / kThreads));
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad_output.scalar_type(), "chunk_partial_sums", [&] {
    chunk_partial_sums_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        grad_output.data_ptr<scalar_t>(), seg.order.data_ptr<int64_t>(), chunks.begin.data_ptr<int64_t>(),
        chunks.end.data_ptr<int64_t>(), D, partials.data_ptr<float>());
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
  auto row_grads = at::empty({seg.count(), D}, grad_output.options().dtype(at::kFloat));
  if (seg.count() == 0 || D == 0) return {seg.rows, row_grads};
  const auto grad = grad_output.contiguous();
  const Chunks chunks = make_chunks(seg);
  const auto partials = chunk_partial_sums(grad, seg, chunks);
  const dim3 grid(static_cast<unsigned>(seg.count()), static_cast<unsigned>((D + kThreads - 1) / kThreads));
  segment_sums_kernel<<<grid, kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<float>(), chunks.segment_chunks.data_ptr<int64_t>(), D, row_grads.data_ptr<float>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {seg.rows, row_grads};
}

void rowwise_adam_cuda(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq, at::Tensor& row_step,
                       const at::Tensor& rows, const at::Tensor& row_grads, int64_t step, double lr, double beta1,
                       double beta2, double eps, double weight_decay, bool decoupled, bool per_row_step) {
  const int64_t D = weight.size(1);
  const AdamScalars a = check_rowwise_adam("rowwise_adam_", weight, exp_avg, exp_avg_sq, row_step, rows, row_grads,
                                           step, lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/true);
  const c10::cuda::CUDAGuard guard(weight.device());
  if (rows.numel() == 0) return;
  const auto grads = row_grads.contiguous();
  // Each row is its own one-chunk segment.
  const auto segment_chunks = at::arange(rows.size(0) + 1, rows.options());
  segment_adam_kernel<<<static_cast<unsigned>(rows.size(0)), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      grads.data_ptr<float>(), segment_chunks.data_ptr<int64_t>(), rows.data_ptr<int64_t>(), D,
      weight.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
      row_step.data_ptr<int64_t>(), step, a, per_row_step);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void embedding_backward_adam_cuda(at::Tensor& weight, at::Tensor& exp_avg, at::Tensor& exp_avg_sq,
                                  at::Tensor& row_step, const at::Tensor& indices, const at::Tensor& grad_output,
                                  int64_t padding_idx, int64_t step, double lr, double beta1, double beta2, double eps,
                                  double weight_decay, bool decoupled, bool per_row_step) {
  const int64_t D = grad_output.size(1);
  const AdamScalars a =
      check_rowwise_adam("embedding_backward_adam_", weight, exp_avg, exp_avg_sq, row_step, indices, grad_output, step,
                         lr, beta1, beta2, eps, weight_decay, decoupled, /*float_gradients=*/false);
  const c10::cuda::CUDAGuard guard(weight.device());
  const Segments seg = sort_into_segments(indices, padding_idx);
  if (seg.count() == 0 || D == 0) return;
  const auto grad = grad_output.contiguous();
  const Chunks chunks = make_chunks(seg);
  const auto partials = chunk_partial_sums(grad, seg, chunks);
  segment_adam_kernel<<<static_cast<unsigned>(seg.count()), kThreads, 0, at::cuda::getCurrentCUDAStream()>>>(
      partials.data_ptr<float>(), chunks.segment_chunks.data_ptr<int64_t>(), seg.rows.data_ptr<int64_t>(), D,
      weight.data_ptr<float>(), exp_avg.data_ptr<float>(), exp_avg_sq.data_ptr<float>(),
      row_step.data_ptr<int64_t>(), step, a, per_row_step);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace
}  // namespace freshrec::ops

TORCH_LIBRARY_IMPL(freshrec, CUDA, m) {
  m.impl("embedding_backward_sparse", &freshrec::ops::embedding_backward_sparse_cuda);
  m.impl("rowwise_adam_", &freshrec::ops::rowwise_adam_cuda);
  m.impl("embedding_backward_adam_", &freshrec::ops::embedding_backward_adam_cuda);
}
