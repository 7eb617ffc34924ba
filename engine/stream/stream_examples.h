// What the stream's model steps take: the events of a micro-batch as views into the history store,
// and the device tensors built from them once per micro-batch.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/Device.h>

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace freshrec {

// One event waiting in the micro-batch. Its history is the first `length` items of the user's entry
// in the history store, which only appends within a micro-batch: nothing is copied per event.
struct Pending {
  int32_t slot, length;
  int64_t item;
  int64_t seen;  // distinct items of the user before this event (with SeenItems)
  bool cold;     // the item was new when the event arrived: the model could not have ranked it
  std::chrono::steady_clock::time_point arrival;
  int64_t index = 0;  // its place among the micro-batch's events (every rank's, in a job of several)
};

// An example as a model step takes it: a view of the items before it (oldest first: the user's kept
// items, or a replayed window; the model reads the newest maxlen, the ranking filters them all) and
// its target. Views into the history store hold until the store settles, after the micro-batch; views
// into the replay reservoir until its next remember() or restore().
struct Example {
  const int32_t* history;
  size_t length;
  int64_t item;
};

// A set of examples on the device, built once per micro-batch and shared by its ranking, the
// teacher's step and the student's.
struct StepInputs {
  at::Tensor inputs;    // (B, maxlen) newest items, left-padded with 0
  at::Tensor targets;   // (B)
  at::Tensor excluded;  // (B, S) each row's history but its target, padded with 0 (ExcludedItems)
};

// The model's inputs, the targets and (for the ranking, and the loss with train.exclude_seen) each
// example's excluded items, in one walk over the histories.
StepInputs make_step_inputs(const std::vector<Example>& examples, int64_t maxlen, bool with_excluded, c10::Device device);

// Every position of each example's recent sequence (its newest maxlen items, then its target)
// predicting the next item: the training form of stream.train_positions=all.
struct AllPositions {
  at::Tensor inputs;     // (B, maxlen)
  at::Tensor targets;    // (B * maxlen) flat, 0 where a position has no next item
  at::Tensor positions;  // flat indices of the positions that have one
};
AllPositions make_all_positions(const std::vector<Example>& examples, int64_t maxlen, c10::Device device);

// A (B, T) input cut to a model that reads `maxlen` items (left-padded: keep the newest).
at::Tensor newest_columns(const at::Tensor& inputs, int64_t maxlen);

}  // namespace freshrec
