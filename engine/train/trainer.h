// Offline training of a SASRec teacher (or student) on a leave-one-out split: Adam/AdamW with warm-up
// and clipping, validation NDCG@10 every epoch, early stopping with patience, the best checkpoint
// kept, and resumption from the last checkpoint. Seeded per epoch, so a resumed run on the CPU
// repeats an uninterrupted one.
#pragma once

#include <string>

#include "engine/config/config.h"
#include "engine/data/event_log.h"
#include "engine/eval/metrics.h"

namespace freshrec {

struct TrainSummary {
  int64_t epochs_run = 0;  // last epoch trained
  int64_t best_epoch = 0;
  bool early_stopped = false;
  double seconds = 0;
  RankingMetrics best_validation, test, popularity_test;
  std::string best_checkpoint, last_checkpoint;
  int64_t parameters = 0;
  int64_t trained_parameters = 0;  // those the optimizers update (all but a fine-tune's frozen ones)
  // Where the time went: the training steps alone (no validation, no checkpoints) and how many ran;
  // in a job of several, the time in the steps' collectives and the gradient bytes each rank reduced.
  double step_seconds = 0;
  int64_t steps = 0;
  int world_size = 1;
  double step_collective_seconds = 0;
  int64_t step_allreduce_bytes = 0;
  int64_t step_all_to_all_bytes = 0;  // rows and their gradients sent to other ranks (a row-sharded table)
};

struct PretrainedModel;

// Trains on `log` as the config says; resume_path (optional) is a last.pt written by a run
// with the same config and data. With teacher_path (a checkpoint trained on the same data), the model
// is a student distilled from that frozen teacher (distill.* keys, engine/train/distill.h). Writes
// best.pt, last.pt, history.jsonl and test.json to train.output_dir.
// With `from` (engine/finetune/pretrained.h), the model starts from that source's weights, aligned to
// the log's items by external id, and trains what the finetune.* keys say (engine/finetune/finetune.h).
TrainSummary train_model(const Config& config, const EventLog& log, const std::string& resume_path = "",
                         const std::string& teacher_path = "", const PretrainedModel* from = nullptr);

}  // namespace freshrec
