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
  return o;
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
  if (!sampled)
    return full_softmax_distillation(student_hidden, student->item_table().narrow(0, 0, known_items), targets,
                                     teacher_hidden, teacher_table, options.alpha, options.temperature, chunk_rows);

  const auto& negatives = sampled->negatives;
  auto negative_rows = student->lookup_items(negatives);  // (M, C)
  auto ce = sampled_softmax_cross_entropy(student_hidden, student->lookup_items(targets), negative_rows, targets,
                                          negatives, sampled->log_q);
  if (options.alpha >= 1) return ce;
  // The teacher's top-K items of each row (chunked: a large catalog's (N, V) scores never exist whole).
  const int64_t N = student_hidden.size(0), K = std::min<int64_t>(options.top_k, known_items - 1);
  torch::Tensor top_ids, top_teacher;
  {
    torch::NoGradGuard no_grad;
    const auto items = teacher_table.narrow(0, 1, known_items - 1);
    std::vector<torch::Tensor> ids, values;
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, N - start);
      auto top = torch::matmul(teacher_hidden.narrow(0, start, rows), items.t()).topk(K, 1);
      values.push_back(std::get<0>(top));
      ids.push_back(std::get<1>(top) + 1);
    }
    top_ids = torch::cat(ids), top_teacher = torch::cat(values);
  }
  auto top_student = (student_hidden.unsqueeze(1) * student->lookup_items(top_ids)).sum(2);  // (N, K)
  auto negative_student = torch::matmul(student_hidden, negative_rows.t());                   // (N, M)
  torch::Tensor negative_teacher;
  {
    torch::NoGradGuard no_grad;
    negative_teacher = torch::matmul(teacher_hidden, teacher_table.index_select(0, negatives).t());
  }
  auto kl = candidate_distillation_kl(torch::cat({top_student, negative_student}, 1),
                                      torch::cat({top_teacher, negative_teacher}, 1), options.temperature);
  return ce * options.alpha + kl * (1 - options.alpha);
}

}  // namespace freshrec
