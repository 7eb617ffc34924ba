// Knowledge distillation from a frozen teacher into a student (same SASRec class, smaller config):
//   loss = alpha * CE(true next item) + (1 - alpha) * tau^2 * KL(teacher_tau || student_tau)
// where x_tau = softmax(scores / tau) (Hinton et al. 2015; tau^2 keeps the soft term's gradient scale
// independent of tau). Two forms:
//  - full catalog: both distributions over every known item, fused with the output projection and
//    computed in row chunks (no (positions x items) matrix lives whole): full_softmax_distillation
//    in losses.h, the cross-entropy's own fused function with a teacher term;
//  - large catalogs: the CE term is the sampled softmax, and the KL runs over each row's teacher
//    top-K items plus the shared sampled negatives (both distributions renormalised over that list).
#pragma once

#include <torch/torch.h>

#include "engine/config/config.h"
#include "engine/train/losses.h"
#include "models/sasrec.h"

namespace freshrec {

struct DistillOptions {
  double alpha = 0.5;        // weight of the label term
  double temperature = 2.0;  // tau
  int64_t top_k = 50;        // teacher's top items per row in the sampled form
  static DistillOptions from_config(const Config& config);  // distill.alpha, .temperature, .top_k
};

// tau^2 * KL(softmax(teacher/tau) || softmax(student/tau)) over the columns, mean over rows.
// student_logits, teacher_logits: (N, M).
torch::Tensor candidate_distillation_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                        double temperature);

// For the sampled form: the negatives shared by the batch and their log draw probabilities.
struct SampledCandidates {
  torch::Tensor negatives;  // (M) item ids
  torch::Tensor log_q;      // (V) log draw probability of each item (the log-Q correction)
};

// The distillation loss of `student` against `teacher` on the same rows. student_hidden: (N, C)
// with gradient; teacher_hidden: (N, Ct) computed without gradient; targets: (N). Only items
// 1..known_items-1 are candidates (rows past them are a growing table's spare capacity).
// `sampled` null: full-catalog form; else the sampled form (student lookups go through
// SASRec::lookup_items, so sparse embeddings work).
torch::Tensor distillation_loss(const DistillOptions& options, SASRec& student, SASRec& teacher,
                                const torch::Tensor& student_hidden, const torch::Tensor& teacher_hidden,
                                const torch::Tensor& targets, int64_t known_items, const SampledCandidates* sampled,
                                int64_t chunk_rows);

}  // namespace freshrec
