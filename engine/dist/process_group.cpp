// The job's process group; see process_group.h.
#include "engine/dist/process_group.h"

#include <torch/csrc/distributed/c10d/PrefixStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef FRESHREC_WITH_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#include <torch/torch.h>

#include <cstdlib>
#include <map>
#include <stdexcept>

namespace freshrec {

struct ProcessGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
  torch::Device device{torch::kCPU};
};

std::string resolve_backend(const std::string& setting, bool cuda) {
  if (setting == "auto") return cuda ? "nccl" : "gloo";
  if (setting != "gloo" && setting != "nccl")
    throw std::invalid_argument("dist.backend: expected auto, gloo or nccl, got '" + setting + "'");
  if (setting == "nccl" && !cuda)
    throw std::invalid_argument("dist.backend=nccl reduces GPU tensors: it needs train.device=cuda (gloo serves the CPU)");
  return setting;
}

c10::Device job_device(const DistEnv& env, c10::Device selected) {
  if (!env.distributed() || !selected.is_cuda()) return selected;
  const auto gpus = static_cast<int>(torch::cuda::device_count());
  return c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(gpus > 0 ? env.local_rank % gpus : 0));
}

std::unique_ptr<ProcessGroup> join_job(const DistEnv& env, const Config& config, c10::Device device) {
  if (!env.distributed()) return nullptr;
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.get_float("dist.timeout_seconds") * 1000));
  return std::make_unique<ProcessGroup>(env, resolve_backend(config.get_string("dist.backend"), device.is_cuda()),
                                        timeout, device);
}

RankingMetrics summed(ProcessGroup* group, const RankingMetrics& share) {
  return group ? RankingMetrics::from_sums(share.ks(), group->sum(share.sums())) : share;
}

ProcessGroup::ProcessGroup(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout,
                           c10::Device device)
    : impl_(std::make_unique<Impl>()), rank_(env.rank), size_(env.world_size), backend_(backend) {
  // Gloo reduces host tensors here (a small sum() included); NCCL, this rank's GPU's.
  impl_->device = backend == "nccl" ? device : torch::Device(torch::kCPU);
  const std::string where = env.master_addr + ":" + std::to_string(env.master_port);
  try {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(env.master_port);
    options.isServer = env.rank == 0 && !env.agent_store;
    options.numWorkers = env.world_size;
    options.waitWorkers = false;
    options.timeout = timeout;
    auto tcp = c10::make_intrusive<c10d::TCPStore>(env.master_addr, options);
    // A restarted job (torchrun --max-restarts) meets under keys of its own.
    impl_->store = c10::make_intrusive<c10d::PrefixStore>("freshrec/" + std::to_string(env.restart_count), tcp);
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env.rank) + ": cannot reach the rendezvous store at " + where +
                             ": " + e.what());
  }
  try {
    if (backend == "gloo") {
      auto options = c10d::ProcessGroupGloo::Options::create(timeout);
      // GLOO_SOCKET_IFNAME names the interface, as with PyTorch; a loopback master means one machine.
      const char* interface = std::getenv("GLOO_SOCKET_IFNAME");
      const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost" || env.master_addr == "::1";
      if (interface != nullptr && *interface != '\0')
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(interface));
      else if (loopback)
        options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
      else
        options->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      impl_->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, env.rank, env.world_size, options);
    } else if (backend == "nccl") {
#ifdef FRESHREC_WITH_NCCL
      auto options = c10d::ProcessGroupNCCL::Options::create();
      options->timeout = timeout;
      impl_->backend = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, env.rank, env.world_size, options);
#else
      throw std::runtime_error("this build has no NCCL (nccl.h was not found when it was configured)");
#endif
    } else {
      throw std::invalid_argument("unknown backend '" + backend + "'");
    }
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(env.rank) + ": cannot start the " + backend +
                             " process group (store " + where + "): " + e.what());
  }
}

ProcessGroup::~ProcessGroup() = default;

namespace {

// Waits for a collective; when it fails (a peer process stopped, or the network between them broke, or
// the timeout passed) the error says so, with this rank, above the backend's own words.
void wait_for(c10d::Work& work, int rank) {
  try {
    work.wait();
  } catch (const std::exception& e) {
    throw std::runtime_error("rank " + std::to_string(rank) +
                             ": a collective of the job failed: another rank stopped (its log, or torchrun's summary, "
                             "names it and why) or the connection to it broke: " + e.what());
  }
}

}  // namespace

void ProcessGroup::allreduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes) {
  const auto started = std::chrono::steady_clock::now();
  // Buckets of one dtype, in the given order: the same buckets on every rank.
  std::vector<std::vector<at::Tensor>> buckets;
  int64_t filled = 0;
  for (const auto& t : tensors) {
    TORCH_CHECK(t.is_contiguous(), "allreduce_sum: a tensor is not contiguous");
    const int64_t bytes = t.numel() * static_cast<int64_t>(t.element_size());
    if (buckets.empty() || filled + bytes > bucket_bytes || buckets.back().front().scalar_type() != t.scalar_type()) {
      buckets.emplace_back();
      filled = 0;
    }
    buckets.back().push_back(t);
    filled += bytes;
  }
  std::vector<std::pair<c10::intrusive_ptr<c10d::Work>, at::Tensor>> pending;
  for (auto& bucket : buckets) {
    std::vector<at::Tensor> flat{bucket.size() == 1 ? bucket.front().view({-1})
                                                    : torch::cat([&] {
                                                        std::vector<at::Tensor> views;
                                                        for (const auto& t : bucket) views.push_back(t.view({-1}));
                                                        return views;
                                                      }())};
    pending.emplace_back(impl_->backend->allreduce(flat, c10d::AllreduceOptions{}), flat.front());
  }
  for (size_t b = 0; b < buckets.size(); ++b) {
    wait_for(*pending[b].first, rank_);
    if (buckets[b].size() == 1) continue;  // reduced in place
    int64_t offset = 0;
    for (auto& t : buckets[b]) {
      t.view({-1}).copy_(pending[b].second.narrow(0, offset, t.numel()));
      offset += t.numel();
    }
  }
  for (const auto& t : tensors) allreduce_bytes_ += t.numel() * static_cast<int64_t>(t.element_size());
  collective_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

std::function<void()> ProcessGroup::start_sum(const at::Tensor& flat) {
  TORCH_CHECK(flat.is_contiguous(), "start_sum: the tensor is not contiguous");
  const auto started = std::chrono::steady_clock::now();
  std::vector<at::Tensor> tensors{flat};
  auto work = impl_->backend->allreduce(tensors, c10d::AllreduceOptions{});
  allreduce_bytes_ += flat.numel() * static_cast<int64_t>(flat.element_size());
  collective_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return [this, work] {
    const auto waited = std::chrono::steady_clock::now();
    wait_for(*work, rank_);
    collective_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - waited).count();
  };
}

std::vector<double> ProcessGroup::sum(const std::vector<double>& values) {
  auto t = torch::tensor(values, torch::kDouble).to(impl_->device);
  allreduce_sum({t});
  t = t.cpu();
  return std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
}

at::Tensor ProcessGroup::all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_counts,
                                    const std::vector<int64_t>& recv_counts) {
  TORCH_CHECK(static_cast<int>(send_counts.size()) == size_ && static_cast<int>(recv_counts.size()) == size_,
              "all_to_all: one count per rank expected");
  int64_t sent = 0, received = 0;
  for (int r = 0; r < size_; ++r) sent += send_counts[r], received += recv_counts[r];
  TORCH_CHECK(input.dim() >= 1 && input.size(0) == sent, "all_to_all: ", input.sizes(), " rows, counts say ", sent);
  const auto started = std::chrono::steady_clock::now();
  auto shape = input.sizes().vec();
  shape[0] = received;
  auto in = input.to(impl_->device).contiguous();
  auto out = torch::empty(shape, in.options());
  std::vector<int64_t> send(send_counts), recv(recv_counts);
  wait_for(*impl_->backend->alltoall_base(out, in, recv, send, c10d::AllToAllOptions{}), rank_);
  const int64_t row_bytes = input.numel() / std::max<int64_t>(input.size(0), 1) * static_cast<int64_t>(input.element_size());
  all_to_all_bytes_ += (sent - send_counts[rank_]) * row_bytes;
  collective_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  return out.to(input.device());
}

std::vector<int64_t> ProcessGroup::exchange_counts(const std::vector<int64_t>& send_counts) {
  const std::vector<int64_t> ones(static_cast<size_t>(size_), 1);
  auto received = all_to_all(torch::tensor(send_counts, torch::kLong), ones, ones).cpu();
  return std::vector<int64_t>(received.data_ptr<int64_t>(), received.data_ptr<int64_t>() + received.numel());
}

at::Tensor ProcessGroup::all_gather(const at::Tensor& rows) {
  const std::vector<int64_t> send(static_cast<size_t>(size_), rows.size(0));
  const std::vector<int64_t> recv = exchange_counts(send);
  // Each rank's block of the all-to-all's input is this rank's rows, whole.
  return all_to_all(torch::cat(std::vector<at::Tensor>(static_cast<size_t>(size_), rows)), send, recv);
}

void ProcessGroup::barrier() {
  const auto started = std::chrono::steady_clock::now();
  c10d::BarrierOptions options;
  if (impl_->device.is_cuda()) options.device_ids = {impl_->device.index()};
  wait_for(*impl_->backend->barrier(options), rank_);
  collective_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
}

}  // namespace freshrec
