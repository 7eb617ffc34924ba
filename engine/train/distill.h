// Knowledge distillation from a frozen teacher into a student (same SASRec class, smaller config):
//   loss = alpha * CE(true next item) + (1 - alpha) * tau^2 * KL(teacher_tau || student_tau)
// where x_tau = softmax(scores / tau) (Hinton et al. 2015; tau^2 keeps the soft term's gradient scale
// independent of tau). Two forms:
//  - full catalog: both distributions over every known item, fused with the output projection and
//    computed in row chunks (no (positions x items) matrix lives whole): full_softmax_distillation
//    in losses.h, the cross-entropy's own fused function with a teacher term;
//  - large catalogs: the CE term is the sampled softmax, and the KL runs over each row's teacher
//    top-K items plus the shared sampled negatives (both distributions renormalised over that list).
// Options from the distillation literature, each a config switch:
//  - soft targets over the teacher's top-K items alone in the full form (distill.soft_targets=top_k):
//    the full-softmax CE, and the KL over each row's teacher top-K, both distributions renormalised;
//  - ranking distillation after Tang & Wang (KDD 2018): the teacher's top-K items of each row as
//    extra, weighted positives, loss += distill.ranking_weight * -sum_k w_k log sigmoid(student score
//    of the teacher's k-th item), with position weights w_k proportional to 1/k and summing to 1 (the
//    paper weighs positions by exp(-k / lambda) and adds a dynamic weight; distill.ranking_k > 0);
//  - the student's item table started from the teacher's (distill.init_items=teacher): the teacher's
//    rows projected onto their leading right singular vectors (see project_teacher_items).
#pragma once

#include <torch/torch.h>

#include "engine/config/config.h"
#include "engine/train/losses.h"
#include "models/sasrec.h"

namespace freshrec {

struct DistillOptions {
  double alpha = 0.5;              // weight of the label term
  double temperature = 2.0;        // tau
  int64_t top_k = 50;              // teacher's top items per row in the sampled form (and with top_k_targets)
  bool top_k_targets = false;      // full form: the teacher term over each row's teacher top-K alone
  int64_t ranking_k = 0;           // ranking distillation's teacher items per row (0: off)
  double ranking_weight = 0;       // its weight
  bool init_from_teacher = false;  // the student's item table from the teacher's (distill.init_items)
  static DistillOptions from_config(const Config& config);  // distill.*
};

// The ranking-distillation term: -sum_k w_k log sigmoid(student_scores[:, k]), w_k = (1/k) / H_K (the
// K-th harmonic number), mean over rows. student_scores: (N, K), the student's scores of each row's
// teacher top-K items in the teacher's order.
torch::Tensor ranking_distillation_loss(const torch::Tensor& student_scores);

// The teacher's item rows (1..known_items-1) projected onto their `width` leading right singular
// vectors (the rank-`width` linear map that best keeps their inner products): (known_items, width),
// row 0 zero. A student of that width starts its item table from it.
torch::Tensor project_teacher_items(const torch::Tensor& teacher_table, int64_t known_items, int64_t width);

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
