// The stream's model step over one micro-batch, test then train: each event is ranked by the models
// as they are before it, then the teacher learns from the events that have a history (with replayed
// past examples beside them) and the student takes a distillation step from the updated teacher.
// One forward ranks and trains when the two would compute the same thing.
#pragma once

#include <c10/core/Device.h>

#include <cstdint>
#include <string>
#include <vector>

#include "engine/stream/replay_reservoir.h"
#include "engine/stream/stream_examples.h"
#include "engine/stream/stream_learner.h"
#include "engine/stream/stream_models.h"
#include "engine/stream/stream_settings.h"
#include "engine/train/distill.h"

namespace freshrec {

// Each event's rank of its item among the known items, its earlier items filtered (int64 (B) on the
// device; student: undefined without a student).
struct BatchRanks {
  at::Tensor teacher, student;
};

class StreamStep {
 public:
  StreamStep(StreamModels models, const StreamSettings& settings, const Config& config, torch::Device device, bool bf16);

  // What a step reads and adds to of the stream around it.
  struct Context {
    uint64_t batch;             // the micro-batch's number: seeds its random draws, so a resume makes the same
    int64_t known;              // the vocabulary's end: items from here on are spare rows, not candidates
    ReplayReservoir& reservoir;
    StreamProfile& profile;
    uint64_t& replayed;         // past examples trained on again
  };

  // Whether learn() can rank from its own forward: no dropout in the updates (train mode is then eval
  // mode), the loss on the newest position (the ranking's), and no replayed rows.
  bool fused() const;
  // Test: ranks of the batch's events (`in`), by the models as they are; nothing learns.
  BatchRanks score(const StepInputs& in, int64_t known);
  // Train on the events of `batch` that have a history (`in`: the batch's StepInputs, reused for
  // them), plus stream.replay_share as many replayed examples. With `ranked` (when fused()), the
  // forward runs over every row of the batch and ranks it there, before any weight changes.
  // Returns (teacher loss, skipped, student loss, skipped) on the device; undefined without a step. In
  // a job of several each loss is this rank's share of the micro-batch's (its mean times its share of
  // the examples): the ranks' sum is the micro-batch's.
  at::Tensor learn(const std::vector<Example>& batch, const StepInputs& in, BatchRanks* ranked, Context& context);
  // The item tables grew to ids 0..rows (both models; new rows draw from the current generator).
  void grow(int64_t rows);
  // A job of several: each rank learns from its share of every micro-batch (teacher and student), its
  // loss weighted by its share of the micro-batch's examples, the dense gradients summed over `group`
  // in buckets of `bucket_bytes` and the item rows' gradients gathered from every rank
  // (Learner::set_process_group, replicate_rows), so every rank takes the step one process would take
  // on the whole micro-batch. Every rank then calls learn() for every micro-batch, with an empty batch
  // when it has no event in it.
  void set_process_group(ProcessGroup* group, int64_t bucket_bytes);

  Learner& teacher() { return models_.teacher; }
  Learner& student() { return models_.student; }  // empty without a student
  const std::string& student_config() const { return models_.student_config; }

 private:
  at::Tensor learn_student(const StepInputs& step, const StepInputs& in, const at::Tensor& rows, BatchRanks* ranked,
                           int64_t known);

  StreamModels models_;
  const StreamSettings settings_;
  ProcessGroup* group_ = nullptr;
  DistillOptions distill_;
  torch::Device device_;
  bool bf16_;  // train.precision=bf16
};

}  // namespace freshrec
