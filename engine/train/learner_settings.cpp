// The learner's settings from the config; see learner_settings.h.
#include "engine/train/learner_settings.h"

#include "engine/config/config.h"

namespace freshrec {

LearnerSettings LearnerSettings::training(const Config& config, bool finetune) {
  LearnerSettings s;
  s.lr = config.get_float("train.lr");
  const double item_lr = finetune ? config.get_float("finetune.item_lr") : 0.0;
  s.item_lr = item_lr > 0 ? item_lr : s.lr;
  s.beta1 = config.get_float("train.beta1");
  s.beta2 = config.get_float("train.beta2");
  s.weight_decay = config.get_float("train.weight_decay");
  s.clip_norm = config.get_float("train.clip_norm");
  s.row_wise_items = config.get_bool("train.sparse_embeddings") || config.get_string("dist.item_table") == "row_sharded";
  s.per_row_step = config.get_string("train.sparse_bias_correction") == "per_row";
  return s;
}

LearnerSettings LearnerSettings::streaming(const Config& config) {
  LearnerSettings s;
  s.lr = s.item_lr = config.get_float("stream.lr");
  s.beta1 = config.get_float("train.beta1");
  s.beta2 = config.get_float("train.beta2");
  s.clip_norm = config.get_float("train.clip_norm");
  s.guard = true;
  s.max_loss = config.get_float("stream.max_loss");
  s.row_wise_items = true;
  s.per_row_step = config.get_string("train.sparse_bias_correction") == "per_row";
  return s;
}

}  // namespace freshrec
