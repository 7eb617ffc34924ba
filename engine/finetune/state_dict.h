// A reader for the files `torch.save(model.state_dict(), path)` writes (the zip format of PyTorch 1.6
// and later): a restricted unpickler that knows the few globals a state_dict holds
// (collections.OrderedDict, torch._utils._rebuild_tensor_v2 and _rebuild_parameter, the typed
// storages, and the type tag LibTorch's own pickler adds) and refuses any other, so a file cannot run code or build objects it does not expect.
// LibTorch's own torch::pickle_load turns an OrderedDict into None in the 2.x wheels, so it cannot
// read a state_dict as Python saves it.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace freshrec {

// The state_dict's tensors by name, on the CPU. Throws std::runtime_error naming the file and what
// it cannot read (the pickle opcode or global, a storage record that is missing or too short).
std::map<std::string, torch::Tensor> read_state_dict(const std::string& path);

}  // namespace freshrec
