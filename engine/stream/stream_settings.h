// The stream's settings (stream.* and the train.* keys the updates share), read from the config into
// typed fields and checked there, before any model is loaded or trained (check_stream_settings).
#pragma once

#include <cstdint>

#include "engine/config/config.h"
#include "engine/train/learner_settings.h"

namespace freshrec {

struct StreamSettings {
  int64_t batch_size, window, history_keep, checkpoint_every, negatives, grow_chunk, max_wait_ms, replay_capacity, ce_chunk;
  int64_t publish_every, publish_keep;
  bool full_softmax, all_positions, exclude_seen, adapters_only;
  double replay_share, checkpoint_seconds, publish_seconds;
  uint64_t seed;
  LearnerSettings learning;  // the teacher's and the student's updates
  // Throws ConfigError naming the key when a value is out of range or two settings conflict.
  explicit StreamSettings(const Config& config);
  bool publishing() const { return publish_every > 0 || publish_seconds > 0; }
};

// Checks the stream.* settings that need no model, so a bad value fails before any pre-training.
void check_stream_settings(const Config& config);

// The dropout rate of the stream's updates for a model trained with `model_dropout`: stream.dropout,
// or the model's own when that is -1.
double update_dropout(const Config& config, double model_dropout);

}  // namespace freshrec
