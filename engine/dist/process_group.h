// The job's process group on PyTorch's distributed runtime (c10d, inside LibTorch): a TCPStore for the
// rendezvous, then Gloo for CPU tensors or NCCL for CUDA tensors. No communication code of our own:
// every collective is c10d's.
#pragma once

#include <ATen/core/Tensor.h>

#include <chrono>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/dist/dist_env.h"
#include "engine/eval/metrics.h"

namespace freshrec {

class ProcessGroup {
 public:
  // Joins the job described by `env` (distributed()): the store at MASTER_ADDR:MASTER_PORT, served
  // by rank 0 unless torchrun's agent serves it, then the backend, "gloo" or "nccl" (a build without
  // NCCL refuses it) for tensors on `device` (this rank's). Blocks until every rank has joined; throws
  // std::runtime_error naming the store and the rank when that takes longer than `timeout`, or when
  // the backend cannot start.
  ProcessGroup(const DistEnv& env, const std::string& backend, std::chrono::milliseconds timeout, c10::Device device);
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  const std::string& backend() const { return backend_; }

  // Sums `tensors` (contiguous, on the backend's device) over every rank, in place. Tensors of one
  // dtype are packed into buckets of at most `bucket_bytes` and each bucket is one collective; the
  // order of tensors must be the same on every rank.
  void allreduce_sum(const std::vector<at::Tensor>& tensors, int64_t bucket_bytes = int64_t{25} << 20);
  // Starts summing `flat` (contiguous, on the backend's device) over every rank, in place, and returns
  // at once; calling the returned function waits until the sum is done. Sums must start in the same
  // order on every rank.
  std::function<void()> start_sum(const at::Tensor& flat);
  // The sums over ranks of host numbers (through the backend's device), elementwise; the same on every rank.
  std::vector<double> sum(const std::vector<double>& values);
  double sum(double value) { return sum(std::vector<double>{value}).front(); }
  void barrier();
  // Sends send_counts[r] rows of `input` (rows along dim 0, in rank order) to each rank r and returns
  // the rows every rank sent this one, recv_counts[r] from rank r, in rank order, on the input's
  // device. The counts must agree with the peers' (exchange_counts gives recv_counts).
  at::Tensor all_to_all(const at::Tensor& input, const std::vector<int64_t>& send_counts,
                        const std::vector<int64_t>& recv_counts);
  // How many rows each rank will send this one, given how many this one sends each (one small all-to-all).
  std::vector<int64_t> exchange_counts(const std::vector<int64_t>& send_counts);
  // Every rank's `rows` (rows along dim 0; the same trailing shape and dtype on every rank, any number
  // of rows, none included), concatenated in rank order, on the input's device: the same on every rank.
  // The counts' exchange, then one all-to-all that sends this rank's rows to each.
  at::Tensor all_gather(const at::Tensor& rows);

  // Since the group started: seconds spent in collectives (launching and waiting for them), and the
  // bytes handed to allreduce (each rank's payload; a ring allreduce moves about 2 (N - 1) / N times
  // as much in and out of each rank).
  double collective_seconds() const { return collective_seconds_; }
  int64_t allreduce_bytes() const { return allreduce_bytes_; }
  // The bytes this rank sent to the other ranks through all_to_all (its rows to itself not counted).
  int64_t all_to_all_bytes() const { return all_to_all_bytes_; }

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  int rank_ = 0, size_ = 1;
  std::string backend_;
  double collective_seconds_ = 0;
  int64_t allreduce_bytes_ = 0;
  int64_t all_to_all_bytes_ = 0;
};

// "gloo" or "nccl" for a dist.backend setting ("auto": nccl on a CUDA device, gloo otherwise).
std::string resolve_backend(const std::string& setting, bool cuda);
// The device of this process: `selected` (train.device's), except that in a job of several on CUDA
// each rank takes the GPU LOCAL_RANK modulo the GPUs present (several share one where there are fewer).
c10::Device job_device(const DistEnv& env, c10::Device selected);
// Joins the job `env` describes with dist.backend and dist.timeout_seconds from `config`, for tensors
// on `device`; null in a job of one.
std::unique_ptr<ProcessGroup> join_job(const DistEnv& env, const Config& config, c10::Device device);
// `share`'s metrics summed over the group's ranks: the whole set's when each rank ranked its share of
// the users (EvalOptions::shard). Without a group, `share` itself.
RankingMetrics summed(ProcessGroup* group, const RankingMetrics& share);

}  // namespace freshrec
