// The stream's models as a run starts them: the teacher (from its checkpoint, or from a stream
// checkpoint when resuming) with its optimizers, and the optional student distilled online.
#pragma once

#include <c10/core/Device.h>

#include <string>

#include "engine/checkpoint/checkpoint.h"
#include "engine/config/config.h"
#include "engine/stream/stream_learner.h"
#include "engine/stream/stream_settings.h"
#include "engine/train/learner.h"

namespace freshrec {

struct StreamModels {
  Learner teacher, student;    // student: empty without one
  std::string student_config;  // the student's config (YAML), saved with it and with what it publishes
};

// Loads the models of `run` on `device` from `info` (the checkpoint it starts from: run.teacher, or
// run.resume, read by the caller), their updates' dropout set (stream.dropout). A teacher's item adapter
// is folded into its table and `info.config_yaml` rewritten to say so; with stream.update=adapters, a
// teacher without LoRA adapters gets zero-initialised ones, recorded there too. With `item_shards`, the
// teacher's item table is sharded by rows across that group (ShardedItemTable), and there is no student.
// Throws naming the file when a resume's update mode differs from the checkpoint's, stream.history_keep
// is shorter than the teacher's maxlen, or --student does not fit the teacher.
StreamModels load_stream_models(const Config& config, const StreamSettings& settings, const StreamRun& run,
                                CheckpointInfo& info, torch::Device device, ProcessGroup* item_shards = nullptr);

}  // namespace freshrec
