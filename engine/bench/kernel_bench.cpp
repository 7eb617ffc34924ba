// `freshrec bench kernels`: one embedding-table update step (lookup gradient -> updated rows) by
// each variant, timed in the same run on the same data: our fused row-wise Adam, LibTorch's dense
// backward + dense Adam, LibTorch's sparse gradient + a row-wise Adam from tensor ops, and the
// memory-traffic bound of the bytes the step must touch at the bandwidth measured in this run.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <functional>
#include <string>

#ifdef FRESHREC_WITH_CUDA
#include <c10/cuda/CUDACachingAllocator.h>
#endif

#include "engine/jobs.h"
#include "engine/runtime.h"
#include "kernels/sparse_embedding.h"

namespace freshrec {
namespace {

using Clock = std::chrono::steady_clock;

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}

// Resident-set peak of this process (VmHWM), reset between variants through /proc/self/clear_refs.
int64_t cpu_peak_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmHWM:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}
int64_t cpu_resident_bytes() {
  std::ifstream status("/proc/self/status");
  for (std::string line; std::getline(status, line);)
    if (line.rfind("VmRSS:", 0) == 0) return std::stoll(line.substr(6)) * 1024;
  return -1;
}

void reset_peak(const torch::Device& device) {
#ifdef FRESHREC_WITH_CUDA
  if (device.is_cuda()) {
    c10::cuda::CUDACachingAllocator::emptyCache();
    c10::cuda::CUDACachingAllocator::resetPeakStats(device.index());
    return;
  }
#endif
  std::ofstream("/proc/self/clear_refs") << "5";
}

// Peak memory since reset_peak, minus what was in use before: the variant's own footprint.
int64_t peak_since(const torch::Device& device, int64_t before) {
#ifdef FRESHREC_WITH_CUDA
  if (device.is_cuda()) {
    const auto stats = c10::cuda::CUDACachingAllocator::getDeviceStats(device.index());
    return stats.allocated_bytes[0].peak - before;
  }
#endif
  return cpu_peak_bytes() - before;
}

int64_t in_use(const torch::Device& device) {
#ifdef FRESHREC_WITH_CUDA
  if (device.is_cuda())
    return c10::cuda::CUDACachingAllocator::getDeviceStats(device.index()).allocated_bytes[0].current;
#endif
  return cpu_resident_bytes();
}

struct Measurement {
  double ms_per_step = 0;
  int64_t peak_bytes = 0;
};

// Median time of `steps` calls after `warmup` calls.
Measurement measure(const torch::Device& device, int64_t warmup, int64_t steps, const std::function<void(int64_t)>& step) {
  for (int64_t i = 1; i <= warmup; ++i) step(i);
  synchronize(device);
  std::vector<double> times;
  for (int64_t i = 1; i <= steps; ++i) {
    const auto start = Clock::now();
    step(warmup + i);
    synchronize(device);
    times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return {times[times.size() / 2], 0};
}

struct TableState {
  torch::Tensor weight, exp_avg, exp_avg_sq, row_step;
  TableState(int64_t rows, int64_t dim, const torch::Device& device) {
    const auto options = torch::TensorOptions().device(device);
    weight = torch::randn({rows, dim}, options) * 0.01;
    exp_avg = torch::zeros({rows, dim}, options);
    exp_avg_sq = torch::zeros({rows, dim}, options);
    row_step = torch::zeros({rows}, options.dtype(torch::kLong));
  }
};

// SparseAdam's arithmetic on the coalesced sparse gradient, written with tensor ops (what a user
// would write without a custom kernel; torch.optim.SparseAdam does the same).
void tensor_ops_rowwise_adam(TableState& s, const torch::Tensor& rows, const torch::Tensor& grads, int64_t step,
                             const ops::RowwiseAdamOptions& o) {
  auto m = s.exp_avg.index_select(0, rows).mul_(o.beta1).add_(grads, 1 - o.beta1);
  auto v = s.exp_avg_sq.index_select(0, rows).mul_(o.beta2).addcmul_(grads, grads, 1 - o.beta2);
  s.exp_avg.index_copy_(0, rows, m);
  s.exp_avg_sq.index_copy_(0, rows, v);
  const double bc1 = 1 - std::pow(o.beta1, step), bc2 = 1 - std::pow(o.beta2, step);
  auto update = m.div(v.sqrt().div_(std::sqrt(bc2)).add_(o.eps)).mul_(-o.lr / bc1);
  s.weight.index_add_(0, rows, update);
}

}  // namespace

int run_kernel_bench_job(const KernelBenchOptions& options) {
  configure_threads(0);
  const torch::Device device = select_device(options.device);
  const bool gpu = device.is_cuda();
  const int64_t rows = options.rows > 0 ? options.rows : (gpu ? 10'000'000 : 1'000'000);
  const int64_t dim = options.dim > 0 ? options.dim : (gpu ? 128 : 64);
  const int64_t lookups = options.lookups, steps = options.steps > 0 ? options.steps : (gpu ? 50 : 5);
  const int64_t warmup = 2;
  ops::RowwiseAdamOptions adam;
  adam.lr = 1e-3;
  torch::manual_seed(0);

  // Bandwidth of this device, measured now: a large copy reads and writes every byte once.
  double bandwidth;  // bytes per second
  {
    auto a = torch::ones({64 * 1024 * 1024}, torch::TensorOptions().device(device));  // 256 MB
    auto b = torch::empty_like(a);
    const auto m = measure(device, 2, 5, [&](int64_t) { b.copy_(a); });
    bandwidth = 2.0 * a.numel() * 4 / (m.ms_per_step / 1000);
  }
  std::printf("freshrec bench kernels: table %lld x %lld fp32, %lld lookups per step, %s%s, median of %lld steps\n",
              static_cast<long long>(rows), static_cast<long long>(dim), static_cast<long long>(lookups),
              device.str().c_str(), gpu ? "" : (" (" + std::to_string(torch::get_num_threads()) + " threads)").c_str(),
              static_cast<long long>(steps));
  std::printf("measured copy bandwidth: %.1f GB/s; weights + two moments: %.1f MB\n", bandwidth / 1e9,
              3.0 * rows * dim * 4 / 1e6);
  std::printf("%-12s %-44s %10s %12s %9s\n", "indices", "variant", "ms/step", "peak MB", "vs dense");

  for (const std::string distribution : {"uniform", "log-uniform"}) {
    torch::Tensor indices;
    if (distribution == "uniform") {
      indices = torch::randint(0, rows, {lookups}, torch::kLong);
    } else {  // power law: P(row < r) = log(1 + r) / log(rows)
      indices = (torch::pow(static_cast<double>(rows), torch::rand({lookups}, torch::kDouble)) - 1)
                    .floor().to(torch::kLong).clamp(0, rows - 1);
    }
    indices = indices.to(device);
    const auto grad_output = torch::randn({lookups, dim}, torch::TensorOptions().device(device));
    const int64_t touched = std::get<0>(at::_unique(indices)).size(0);

    auto run_variant = [&](const std::function<Measurement()>& body) {
      const int64_t before = in_use(device);
      reset_peak(device);
      Measurement m = body();
      m.peak_bytes = peak_since(device, before);
      return m;
    };
    // As the trainer runs it (its lookups already checked the indices: nothing is read back), and
    // as a direct call that checks every index (one read-back of the bounds on a GPU).
    auto fused_update = [&](bool check_indices) {
      return run_variant([&] {
        TableState s(rows, dim, device);
        return measure(device, warmup, steps, [&](int64_t step) {
          ops::embedding_backward_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, indices, grad_output, -1, step,
                                        adam, check_indices);
        });
      });
    };
    const Measurement fused = fused_update(false), fused_checked = fused_update(true);
    const Measurement dense = run_variant([&] {
      auto weight = (torch::randn({rows, dim}, torch::TensorOptions().device(device)) * 0.01).requires_grad_(true);
      torch::optim::Adam optimizer({weight}, torch::optim::AdamOptions(adam.lr));
      return measure(device, warmup, steps, [&](int64_t) {
        weight.mutable_grad() = at::embedding_dense_backward(grad_output, indices, rows, -1, false);
        optimizer.step();
      });
    });
    const Measurement sparse = run_variant([&] {
      TableState s(rows, dim, device);
      return measure(device, warmup, steps, [&](int64_t step) {
        auto grad = at::embedding_sparse_backward(grad_output, indices, rows, -1, false).coalesce();
        tensor_ops_rowwise_adam(s, grad.indices().select(0, 0), grad.values(), step, adam);
      });
    });
    // Bytes the step must move: the gradient rows and indices read once, and weight and both
    // moments of each touched row read and written once.
    const double bytes = lookups * (dim * 4.0 + 8.0) + touched * dim * 4.0 * 3 * 2;
    const double bound_ms = bytes / bandwidth * 1000;

    auto row = [&](const char* name, const Measurement& m, bool ratio) {
      std::printf("%-12s %-44s %10.3f %12.1f", distribution.c_str(), name, m.ms_per_step, m.peak_bytes / 1e6);
      if (ratio) std::printf(" %8.1fx", dense.ms_per_step / m.ms_per_step);
      std::printf("\n");
    };
    row("fused sort-segment + row-wise Adam (ours)", fused, true);
    row("  the same, checking the index range", fused_checked, true);
    row("LibTorch dense backward + dense Adam", dense, true);
    row("LibTorch sparse grad + row-wise Adam (ops)", sparse, true);
    std::printf("%-12s %-44s %10.3f %12s %8.1fx   (%lld touched rows, %.1f MB moved)\n", distribution.c_str(),
                "memory-traffic bound at measured bandwidth", bound_ms, "-", dense.ms_per_step / bound_ms,
                static_cast<long long>(touched), bytes / 1e6);
    std::printf("%-12s fused / bound = %.2f\n", distribution.c_str(), fused.ms_per_step / bound_ms);
  }
  return 0;
}

}  // namespace freshrec
