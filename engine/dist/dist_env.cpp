// The distributed job's variables; see dist_env.h.
#include "engine/dist/dist_env.h"

#include <cstdlib>
#include <stdexcept>

namespace freshrec {
namespace {

// A whole decimal number in [low, high], or the default when the variable is unset.
int integer(const char* name, const char* value, int low, int high, int unset) {
  if (value == nullptr) return unset;
  const std::string text(value);
  bool digits = !text.empty() && text.size() <= 9;
  for (char c : text) digits = digits && c >= '0' && c <= '9';
  const long n = digits ? std::strtol(text.c_str(), nullptr, 10) : -1;
  if (!digits || n < low || n > high) {
    std::string shown = text.substr(0, 40);  // printable ASCII only: the value may be anything
    for (char& c : shown)
      if (c < 0x20 || c > 0x7e) c = '?';
    throw std::invalid_argument(std::string(name) + "='" + shown + "': expected a whole number from " +
                                std::to_string(low) + " to " + std::to_string(high));
  }
  return static_cast<int>(n);
}

}  // namespace

DistEnv DistEnv::from_environment(const std::function<const char*(const char*)>& get) {
  auto read = [&](const char* name) -> const char* { return get ? get(name) : std::getenv(name); };
  DistEnv e;
  e.world_size = integer("WORLD_SIZE", read("WORLD_SIZE"), 1, 1 << 20, 1);
  e.rank = integer("RANK", read("RANK"), 0, e.world_size - 1, 0);
  e.local_rank = integer("LOCAL_RANK", read("LOCAL_RANK"), 0, e.world_size - 1, 0);
  e.local_world_size = integer("LOCAL_WORLD_SIZE", read("LOCAL_WORLD_SIZE"), 1, e.world_size, 1);
  e.restart_count = integer("TORCHELASTIC_RESTART_COUNT", read("TORCHELASTIC_RESTART_COUNT"), 0, 1 << 20, 0);
  if (const char* id = read("TORCHELASTIC_RUN_ID")) {
    e.run_id = std::string(id).substr(0, 200);
    for (char& c : e.run_id)
      if (c < 0x20 || c > 0x7e) c = '?';  // printable ASCII only: it goes into files and logs
  }
  const char* agent = read("TORCHELASTIC_USE_AGENT_STORE");
  e.agent_store = agent != nullptr && std::string(agent) == "True";
  if (!e.distributed()) return e;
  const char* addr = read("MASTER_ADDR");
  if (addr == nullptr || *addr == '\0')
    throw std::invalid_argument("MASTER_ADDR is not set: a job of WORLD_SIZE=" + std::to_string(e.world_size) +
                                " needs the rendezvous host (torchrun sets it)");
  e.master_addr = addr;
  if (e.master_addr.size() > 253) throw std::invalid_argument("MASTER_ADDR: longer than a host name can be");
  if (read("MASTER_PORT") == nullptr)
    throw std::invalid_argument("MASTER_PORT is not set: a job of WORLD_SIZE=" + std::to_string(e.world_size) +
                                " needs the rendezvous port (torchrun sets it)");
  e.master_port = integer("MASTER_PORT", read("MASTER_PORT"), 1, 65535, 0);
  return e;
}

}  // namespace freshrec
