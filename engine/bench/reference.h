// Runs the Python PyTorch-eager reference (tools/bench/sasrec_reference.py) and returns the JSON
// line it prints among any warnings; throws with its output when it fails or prints none.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace freshrec {

nlohmann::json run_python_reference(const std::string& command);

}  // namespace freshrec
