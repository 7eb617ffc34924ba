// Where this process sits in a distributed job, from the variables torchrun (and Kubeflow's
// PyTorchJob, and most Slurm recipes) set: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
// A process started without WORLD_SIZE (or with WORLD_SIZE=1) is a job of one. Torch-free.
#pragma once

#include <cstdint>
#include <functional>
#include <string>

namespace freshrec {

struct DistEnv {
  int rank = 0, world_size = 1, local_rank = 0;
  int local_world_size = 1;  // LOCAL_WORLD_SIZE (torchrun's): the job's processes on this machine
  std::string master_addr;  // the rendezvous store's host
  int master_port = 0;
  // torchrun's agent already serves the store at MASTER_ADDR:MASTER_PORT
  // (TORCHELASTIC_USE_AGENT_STORE=True): every rank connects to it as a client.
  bool agent_store = false;
  int restart_count = 0;  // TORCHELASTIC_RESTART_COUNT: keys of a restarted job's rendezvous are its own
  std::string run_id;     // TORCHELASTIC_RUN_ID: torchrun's id of the job, the same across its restarts ("": none)

  bool distributed() const { return world_size > 1; }
  // Reads the variables through `get` (getenv by default). Throws std::invalid_argument naming the
  // variable when one is malformed or out of range, or when a job of several lacks MASTER_ADDR or
  // MASTER_PORT.
  static DistEnv from_environment(const std::function<const char*(const char*)>& get = {});
};

}  // namespace freshrec
