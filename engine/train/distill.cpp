// Distillation losses; see distill.h.
#include "engine/train/distill.h"

#include "engine/train/losses.h"

namespace freshrec {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Same structure as the fused cross-entropy in losses.cpp: per chunk of rows, student and teacher
// logits over the catalog, the loss, and dL/dlogits turned at once into the hidden and table
// gradients; backward only scales what the forward saved.
struct FusedDistillation : public torch::autograd::Function<FusedDistillation> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& table,
                               const torch::Tensor& targets, const torch::Tensor& teacher_hidden,
                               const torch::Tensor& teacher_table, double alpha, double tau, int64_t chunk_rows) {
    const int64_t N = hidden.size(0), V = table.size(0);
    const bool need_grad = hidden.requires_grad() || table.requires_grad();
    auto items = table.narrow(0, 1, V - 1).to(torch::kFloat);                  // (V-1, C)
    auto teacher_items = teacher_table.narrow(0, 1, V - 1).to(torch::kFloat);  // (V-1, Ct)
    auto ce = torch::zeros({}, items.options()), kl = torch::zeros({}, items.options());
    torch::Tensor d_hidden, d_table;
    if (need_grad) {
      d_hidden = torch::empty({N, hidden.size(1)}, items.options());
      d_table = torch::zeros({V, table.size(1)}, items.options());
    }
    const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(N, 1));
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, N - start);
      auto h = hidden.narrow(0, start, rows).to(torch::kFloat);
      auto t = (targets.narrow(0, start, rows) - 1).unsqueeze(1);  // column of the target among items 1..V-1
      auto logits = torch::matmul(h, items.t());                                                   // (c, V-1)
      auto teacher_logits = torch::matmul(teacher_hidden.narrow(0, start, rows).to(torch::kFloat), teacher_items.t());
      auto log_p = torch::log_softmax(logits, 1);
      ce -= log_p.gather(1, t).sum();
      auto log_ps = torch::log_softmax(logits / tau, 1);
      auto log_pt = torch::log_softmax(teacher_logits / tau, 1);
      auto pt = log_pt.exp();
      kl += (pt * (log_pt - log_ps)).sum();
      if (need_grad) {
        // dL/dlogits = alpha (p - onehot) + (1 - alpha) tau (p_tau - pt_tau), over N rows.
        auto g = log_p.exp_().mul_(alpha);
        g.scatter_add_(1, t, torch::full({rows, 1}, -alpha, g.options()));
        g.add_(log_ps.exp_().sub_(pt), (1 - alpha) * tau).mul_(inv_n);
        d_hidden.narrow(0, start, rows).copy_(torch::matmul(g, items));
        d_table.narrow(0, 1, V - 1).addmm_(g.t(), h);
      }
    }
    if (need_grad) ctx->save_for_backward({d_hidden.to(hidden.dtype()), d_table.to(table.dtype())});
    return (ce * alpha + kl * ((1 - alpha) * tau * tau)) * inv_n;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grad_outputs[0];
    return {saved[0] * g, saved[1] * g, {}, {}, {}, {}, {}, {}};
  }
};

}  // namespace

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

torch::Tensor full_softmax_distillation(const torch::Tensor& hidden, const torch::Tensor& table,
                                        const torch::Tensor& targets, const torch::Tensor& teacher_hidden,
                                        const torch::Tensor& teacher_table, double alpha, double temperature,
                                        int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && table.dim() == 2 && hidden.size(1) == table.size(1),
              "full_softmax_distillation: hidden ", hidden.sizes(), " and table ", table.sizes(), " do not match");
  TORCH_CHECK(teacher_hidden.dim() == 2 && teacher_table.dim() == 2 && teacher_hidden.size(1) == teacher_table.size(1),
              "full_softmax_distillation: teacher hidden ", teacher_hidden.sizes(), " and teacher table ",
              teacher_table.sizes(), " do not match");
  TORCH_CHECK(teacher_table.size(0) == table.size(0), "full_softmax_distillation: teacher has ", teacher_table.size(0),
              " item rows, student ", table.size(0), " (they must share one item vocabulary)");
  TORCH_CHECK(table.size(0) >= 2, "full_softmax_distillation: the table has no item besides padding");
  TORCH_CHECK(teacher_hidden.size(0) == hidden.size(0) && targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "full_softmax_distillation: ", hidden.size(0), " student rows, ", teacher_hidden.size(0),
              " teacher rows and targets ", targets.sizes(), " must agree");
  TORCH_CHECK(chunk_rows > 0, "full_softmax_distillation: chunk_rows must be positive, got ", chunk_rows);
  TORCH_CHECK(temperature > 0 && alpha >= 0 && alpha <= 1, "full_softmax_distillation: need temperature > 0 and ",
              "alpha in [0, 1], got ", temperature, " and ", alpha);
  return FusedDistillation::apply(hidden, table, targets, teacher_hidden.detach(), teacher_table.detach(), alpha,
                                  temperature, chunk_rows);
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
  const auto teacher_table = teacher->item_embedding().detach().narrow(0, 0, known_items);
  if (!sampled)
    return full_softmax_distillation(student_hidden, student->item_embedding().narrow(0, 0, known_items), targets,
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
