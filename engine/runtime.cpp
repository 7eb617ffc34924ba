// Runtime settings; see runtime.h.
#include "engine/runtime.h"

#include "engine/dist/dist_env.h"

#include <ATen/autocast_mode.h>
#include <spdlog/spdlog.h>

#include <stdexcept>
#include <thread>

namespace freshrec {

torch::Device select_device(const std::string& name) {
  const bool gpu = torch::cuda::is_available();
  if (name == "cuda" && !gpu) throw std::runtime_error("train.device is 'cuda' but no CUDA GPU is available");
  if (name == "cuda" || (name == "auto" && gpu)) return torch::Device(torch::kCUDA, 0);
  if (name != "cpu" && name != "auto") throw std::runtime_error("unknown device '" + name + "' (known: auto, cpu, cuda)");
  return torch::Device(torch::kCPU);
}

torch::Tensor long_tensor(const std::vector<int64_t>& values, std::vector<int64_t> shape, torch::Device device) {
  const auto host = torch::from_blob(const_cast<int64_t*>(values.data()), shape, torch::kLong);
  if (!device.is_cuda()) return host.clone();
  // Through pinned memory, asynchronously: a copy from pageable memory would wait for the GPU to
  // finish the previous step before the next could be queued. The caching host allocator keeps the
  // pinned block until the copy is done.
  auto pinned = torch::empty(shape, torch::TensorOptions().dtype(torch::kLong).pinned_memory(true));
  pinned.copy_(host);
  return pinned.to(device, /*non_blocking=*/true);
}

bool configure_precision(const std::string& precision) {
  if (precision != "fp32" && precision != "tf32" && precision != "bf16")
    throw std::invalid_argument("train.precision must be fp32, tf32 or bf16, got '" + precision + "'");
  const bool tf32 = precision == "tf32";
  at::globalContext().setAllowTF32CuBLAS(tf32);
  at::globalContext().setAllowTF32CuDNN(tf32);
  return precision == "bf16";
}

Autocast::Autocast(torch::Device device, bool enabled) : type_(device.type()), enabled_(enabled) {
  if (!enabled_) return;
  was_enabled_ = at::autocast::is_autocast_enabled(type_);
  was_dtype_ = at::autocast::get_autocast_dtype(type_);
  at::autocast::set_autocast_dtype(type_, at::kBFloat16);
  at::autocast::set_autocast_enabled(type_, true);
}

Autocast::~Autocast() {
  if (!enabled_) return;
  at::autocast::set_autocast_enabled(type_, was_enabled_);
  at::autocast::set_autocast_dtype(type_, was_dtype_);
  if (!was_enabled_) at::autocast::clear_cache();
}

void configure_threads(int64_t threads) {
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  // 0: this process's share of the machine's cores, with the job's other processes on it (torchrun's
  // LOCAL_WORLD_SIZE), so that they do not oversubscribe the cores.
  const int64_t n = threads > 0 ? threads : std::max<int64_t>(1, cores / DistEnv::from_environment().local_world_size);
  if (torch::get_num_threads() != n) torch::set_num_threads(static_cast<int>(n));
  spdlog::debug("intra-op threads: {} ({} cores)", n, cores);
}

}  // namespace freshrec
