// Distillation losses; see distill.h.
#include "engine/train/distill.h"

#include "engine/train/losses.h"

namespace freshrec {

DistillOptions DistillOptions::from_config(const Config& config) {
  DistillOptions o;
  o.alpha = config.get_float("distill.alpha");
  o.temperature = config.get_float("distill.temperature");
  o.top_k = config.get_int("distill.top_k");
  if (o.alpha < 0 || o.alpha > 1)
    throw ConfigError(config.origin("distill.alpha") + ": distill.alpha must be in [0, 1], got " + std::to_string(o.alpha));
  if (o.temperature <= 0)
    throw ConfigError(config.origin("distill.temperature") + ": distill.temperature must be positive, got " +
                      std::to_string(o.temperature));
  if (o.top_k <= 0)
    throw ConfigError(config.origin("distill.top_k") + ": distill.top_k must be positive, got " + std::to_string(o.top_k));
  o.top_k_targets = config.get_string("distill.soft_targets") == "top_k";
  o.ranking_k = config.get_int("distill.ranking_k");
  o.ranking_weight = config.get_float("distill.ranking_weight");
  if ((o.ranking_k > 0) != (o.ranking_weight > 0))
    throw ConfigError(config.origin(o.ranking_k > 0 ? "distill.ranking_k" : "distill.ranking_weight") +
                      ": ranking distillation needs both distill.ranking_k and distill.ranking_weight positive (got " +
                      std::to_string(o.ranking_k) + " and " + std::to_string(o.ranking_weight) + ")");
  o.init_from_teacher = config.get_string("distill.init_items") == "teacher";
  return o;
}

torch::Tensor ranking_distillation_loss(const torch::Tensor& student_scores) {
  TORCH_CHECK(student_scores.dim() == 2 && student_scores.size(1) > 0, "ranking_distillation_loss: scores ", student_scores.sizes());
  const int64_t K = student_scores.size(1);
  auto weights = 1.0 / torch::arange(1, K + 1, student_scores.options().dtype(torch::kFloat));
  weights = weights / weights.sum();
  return -(torch::log_sigmoid(student_scores.to(torch::kFloat)) * weights).sum(1).mean();
}

torch::Tensor project_teacher_items(const torch::Tensor& teacher_table, int64_t known_items, int64_t width) {
  TORCH_CHECK(known_items >= 2 && known_items <= teacher_table.size(0), "project_teacher_items: ", known_items,
              " known items for a table of ", teacher_table.size(0), " rows");
  TORCH_CHECK(width >= 1 && width <= teacher_table.size(1), "project_teacher_items: a student of width ", width,
              " from a teacher of width ", teacher_table.size(1), " (the student must not be wider)");
  torch::NoGradGuard no_grad;
  const auto rows = teacher_table.detach().narrow(0, 1, known_items - 1).to(torch::kCPU, torch::kDouble);
  const auto svd = torch::linalg_svd(rows, /*full_matrices=*/false);
  const auto directions = std::get<2>(svd).narrow(0, 0, width).t();  // (C_teacher, width)
  auto projected = torch::zeros({known_items, width}, rows.options());
  projected.narrow(0, 1, known_items - 1).copy_(torch::matmul(rows, directions));
  return projected.to(teacher_table.device(), teacher_table.scalar_type());
}

torch::Tensor candidate_distillation_kl(const torch::Tensor& student_logits, const torch::Tensor& teacher_logits,
                                        double temperature) {
  TORCH_CHECK(student_logits.sizes() == teacher_logits.sizes(), "candidate_distillation_kl: student ",
              student_logits.sizes(), " and teacher ", teacher_logits.sizes(), " logits differ in shape");
  auto log_ps = torch::log_softmax(student_logits.to(torch::kFloat) / temperature, 1);
  auto log_pt = torch::log_softmax(teacher_logits.detach().to(torch::kFloat) / temperature, 1);
  return (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * (temperature * temperature);
}

torch::Tensor distillation_loss(const DistillOptions& options, SASRec& student, SASRec& teacher,
                                const torch::Tensor& student_hidden, const torch::Tensor& teacher_hidden,
                                const torch::Tensor& targets, int64_t known_items, const SampledCandidates* sampled,
                                int64_t chunk_rows) {
  TORCH_CHECK(known_items >= 2 && known_items <= student->item_embedding().size(0) &&
                  known_items <= teacher->item_embedding().size(0),
              "distillation_loss: ", known_items, " known items do not fit the student (",
              student->item_embedding().size(0), " rows) and the teacher (", teacher->item_embedding().size(0), " rows)");
  const auto teacher_table = teacher->item_table().detach().narrow(0, 0, known_items);
  const int64_t N = student_hidden.size(0);
  // The teacher's top-K items of each row and their scores, highest first, for the largest K any term
  // needs, computed once (chunked: a large catalog's (N, V) scores never exist whole); a term takes
  // its first k columns.
  const bool soft_top = sampled || options.top_k_targets;
  const int64_t widest = std::min<int64_t>(std::max(soft_top && options.alpha < 1 ? options.top_k : 0, options.ranking_k),
                                           known_items - 1);
  torch::Tensor top_ids_all, top_values_all;
  if (widest > 0) {
    torch::NoGradGuard no_grad;
    const auto items = teacher_table.narrow(0, 1, known_items - 1);
    std::vector<torch::Tensor> ids, values;
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, N - start);
      auto top = torch::matmul(teacher_hidden.narrow(0, start, rows), items.t()).topk(widest, 1);
      values.push_back(std::get<0>(top));
      ids.push_back(std::get<1>(top) + 1);
    }
    top_ids_all = torch::cat(ids), top_values_all = torch::cat(values);
  }
  auto teacher_top = [&](int64_t k) {
    k = std::min(k, widest);
    return std::make_pair(top_ids_all.narrow(1, 0, k).contiguous(), top_values_all.narrow(1, 0, k).contiguous());
  };
  // The student's scores of each row's items: (N, C) x (N, K, C) -> (N, K).
  auto student_scores = [&](const torch::Tensor& ids) { return (student_hidden.unsqueeze(1) * student->lookup_items(ids)).sum(2); };
  auto with_ranking = [&](torch::Tensor loss) {
    if (options.ranking_k == 0) return loss;
    return loss + ranking_distillation_loss(student_scores(teacher_top(options.ranking_k).first)) * options.ranking_weight;
  };

  if (!sampled && !options.top_k_targets)
    return with_ranking(full_softmax_distillation(student_hidden, student->item_table().narrow(0, 0, known_items), targets,
                                                  teacher_hidden, teacher_table, options.alpha, options.temperature, chunk_rows));
  if (!sampled) {  // the full-softmax CE, and the teacher term over its top-K alone
    auto ce = full_softmax_cross_entropy(student_hidden, student->item_table().narrow(0, 0, known_items), targets, chunk_rows);
    if (options.alpha >= 1) return with_ranking(ce);
    const auto [top_ids, top_teacher] = teacher_top(options.top_k);
    auto kl = candidate_distillation_kl(student_scores(top_ids), top_teacher, options.temperature);
    return with_ranking(ce * options.alpha + kl * (1 - options.alpha));
  }

  const auto& negatives = sampled->negatives;
  auto negative_rows = student->lookup_items(negatives);  // (M, C)
  auto ce = sampled_softmax_cross_entropy(student_hidden, student->lookup_items(targets), negative_rows, targets,
                                          negatives, sampled->log_q);
  if (options.alpha >= 1) return with_ranking(ce);
  const auto [top_ids, top_teacher] = teacher_top(options.top_k);
  auto top_student = student_scores(top_ids);                                  // (N, K)
  auto negative_student = torch::matmul(student_hidden, negative_rows.t());    // (N, M)
  torch::Tensor negative_teacher;
  {
    torch::NoGradGuard no_grad;
    negative_teacher = torch::matmul(teacher_hidden, teacher_table.index_select(0, negatives).t());
  }
  auto kl = candidate_distillation_kl(torch::cat({top_student, negative_student}, 1),
                                      torch::cat({top_teacher, negative_teacher}, 1), options.temperature);
  return with_ranking(ce * options.alpha + kl * (1 - options.alpha));
}

}  // namespace freshrec
