// How a Learner updates its model, read from the config once: the optimizers' hyper-parameters,
// clipping, and the step's guard. Training and fine-tuning read train.* (and finetune.item_lr), the
// stream reads stream.* where it has its own keys. Torch-free.
#pragma once

#include <limits>

namespace freshrec {

class Config;

struct LearnerSettings {
  double lr = 1e-3;           // the dense parameters' Adam
  double item_lr = 1e-3;      // the item table's (row-wise, or its own parameter group) and an item adapter's
  double beta1 = 0.9, beta2 = 0.98;
  double weight_decay = 0;    // > 0: AdamW's decoupled decay, on the dense parameters and the table's rows
  double clip_norm = 0;       // > 0: the trained dense parameters' global L2 norm is clipped to it
  // The guard: a step whose loss is not finite or above max_loss, or whose gradients (dense or of the
  // item table) are not finite, changes no weight and no moment; decided on the device.
  bool guard = false;
  double max_loss = std::numeric_limits<double>::infinity();
  bool row_wise_items = false;  // the item table learns row-wise from sparse gradients (fused row-wise Adam)
  bool per_row_step = false;    // the row-wise bias correction counts each row's own steps

  // train.lr, beta1, beta2, weight_decay, clip_norm, sparse_embeddings (or dist.item_table=row_sharded),
  // sparse_bias_correction; a
  // fine-tune's item table at finetune.item_lr when that is above 0. No guard.
  static LearnerSettings training(const Config& config, bool finetune);
  // stream.lr for every weight, train.beta1 / beta2 / clip_norm / sparse_bias_correction, the guard at
  // stream.max_loss; the item table always row-wise, no weight decay.
  static LearnerSettings streaming(const Config& config);
};

}  // namespace freshrec
