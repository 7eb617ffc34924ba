// The stream's step inputs; see stream_examples.h.
#include "engine/stream/stream_examples.h"

#include <torch/torch.h>

#include <algorithm>

#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/runtime.h"

namespace freshrec {

StepInputs make_step_inputs(const std::vector<Example>& examples, int64_t maxlen, bool with_excluded,
                            c10::Device device) {
  const int64_t T = maxlen, rows = static_cast<int64_t>(examples.size());
  std::vector<int64_t> flat(examples.size() * T, 0), targets;
  targets.reserve(examples.size());
  ExcludedItems excluded;
  for (size_t r = 0; r < examples.size(); ++r) {
    const Example& e = examples[r];
    const size_t n = std::min<size_t>(e.length, T);
    std::copy(e.history + e.length - n, e.history + e.length, flat.begin() + r * T + T - n);
    targets.push_back(e.item);
    if (!with_excluded) continue;
    for (size_t k = 0; k < e.length; ++k)
      if (e.history[k] != e.item) excluded.add(e.history[k]);
    excluded.end_row();
  }
  return {long_tensor(flat, {rows, T}, device), long_tensor(targets, {rows}, device),
          with_excluded ? excluded.matrix(device) : torch::Tensor()};
}

AllPositions make_all_positions(const std::vector<Example>& examples, int64_t maxlen, c10::Device device) {
  const int64_t T = maxlen;
  std::vector<int64_t> inputs(examples.size() * T, 0), targets(examples.size() * T, 0);
  std::vector<int32_t> seq;
  for (size_t r = 0; r < examples.size(); ++r) {
    const Example& e = examples[r];
    const size_t n = std::min<size_t>(e.length, T);  // the newest T items and the new one
    seq.assign(e.history + e.length - n, e.history + e.length);
    seq.push_back(static_cast<int32_t>(e.item));
    fill_training_row(seq.data(), seq.size(), T, &inputs[r * T], &targets[r * T]);
  }
  const auto rows = static_cast<int64_t>(examples.size());
  const std::vector<int64_t> target_positions = nonzero_positions(targets);
  return {long_tensor(inputs, {rows, T}, device), long_tensor(targets, {rows * T}, device),
          long_tensor(target_positions, {static_cast<int64_t>(target_positions.size())}, device)};
}

at::Tensor newest_columns(const at::Tensor& inputs, int64_t maxlen) {
  const int64_t T = inputs.size(1), kept = std::min<int64_t>(T, maxlen);
  return inputs.narrow(1, T - kept, kept);
}

}  // namespace freshrec
