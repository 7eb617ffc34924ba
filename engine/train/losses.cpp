// Losses; see losses.h.
#include "engine/train/losses.h"

#include <ATen/autocast_mode.h>
#include <c10/core/impl/LocalDispatchKeySet.h>

#include <limits>

namespace freshrec {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// Why fused: on a 2-core CPU, a batch of 128 x 200 positions over 3,416 items makes 350 MB of logits
// and as much gradient; chunks of 256 rows stay in cache (in a quick experiment on that machine, a
// chunked forward+backward took about half the time of the whole-logits one).
// One function serves the cross-entropy and the distillation loss: per chunk of rows, the logits over
// the catalog (column 0, padding, never a candidate), the loss, and dL/dlogits turned at once into the
// hidden and table gradients; backward only scales what the forward saved. With a teacher (its item
// table non-empty) the loss is alpha CE + (1 - alpha) tau^2 KL(teacher_tau || student_tau)
// over items 1..V-1; without one it is the cross-entropy, optionally with items left out of each
// row's softmax (`excluded`, (N, L) item ids, 0 ignored), as if they were not in the catalog.
// Under autocast (bf16 training) the matmuls run in the autocast dtype, as PyTorch's autocast would
// run an output projection; softmax statistics and gradient sums stay fp32.
struct FusedSoftmaxLoss : public torch::autograd::Function<FusedSoftmaxLoss> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& table,
                               const torch::Tensor& targets, const torch::Tensor& teacher_hidden,
                               const torch::Tensor& teacher_table, const torch::Tensor& excluded, double alpha,
                               double tau, int64_t chunk_rows) {
    const int64_t N = hidden.size(0), V = table.size(0);
    const bool exclude = excluded.numel() > 0;
    const bool need_grad = hidden.requires_grad() || table.requires_grad();
    const bool teacher = teacher_table.numel() > 0;
    if (!teacher) alpha = 1.0;
    const auto device_type = hidden.device().type();
    const auto mm = at::autocast::is_autocast_enabled(device_type) ? at::autocast::get_autocast_dtype(device_type)
                                                                    : torch::kFloat;
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    // Softmax statistics in fp32 whatever the input precision.
    auto table32 = table.to(torch::kFloat);
    auto table_mm = table.to(mm);
    const auto teacher_items = teacher ? teacher_table.narrow(0, 1, V - 1).to(mm) : torch::Tensor();  // (V-1, Ct)
    auto ce = torch::zeros({}, table32.options()), kl = torch::zeros({}, table32.options());
    torch::Tensor d_hidden, d_table;
    if (need_grad) {
      d_hidden = torch::empty({N, hidden.size(1)}, table32.options());
      d_table = torch::zeros_like(table32);
    }
    const double inv_n = 1.0 / static_cast<double>(std::max<int64_t>(N, 1));
    for (int64_t start = 0; start < N; start += chunk_rows) {
      const int64_t rows = std::min(chunk_rows, N - start);
      auto h = hidden.narrow(0, start, rows).to(mm);              // (c, C)
      auto t = targets.narrow(0, start, rows).unsqueeze(1);       // (c, 1)
      auto logits = torch::matmul(h, table_mm.t()).to(torch::kFloat);  // (c, V)
      logits.select(1, 0).fill_(-std::numeric_limits<float>::infinity());
      if (exclude) logits.scatter_(1, excluded.narrow(0, start, rows), -std::numeric_limits<float>::infinity());
      auto lse = logits.logsumexp(1, /*keepdim=*/true);           // (c, 1)
      ce += (lse - logits.gather(1, t)).sum();
      torch::Tensor soft_gradient;  // (c, V-1): p_tau - pt_tau
      if (teacher) {
        auto teacher_logits =
            torch::matmul(teacher_hidden.narrow(0, start, rows).to(mm), teacher_items.t()).to(torch::kFloat);
        auto log_ps = torch::log_softmax(logits.narrow(1, 1, V - 1) / tau, 1);
        auto log_pt = torch::log_softmax(teacher_logits / tau, 1);
        auto pt = log_pt.exp();
        kl += (pt * (log_pt - log_ps)).sum();
        if (need_grad) soft_gradient = log_ps.exp_().sub_(pt);
      }
      if (need_grad) {
        // dL/dlogits = alpha (softmax - onehot) [+ (1 - alpha) tau (p_tau - pt_tau)], over N rows
        auto p = logits.sub_(lse).exp_();
        p.scatter_add_(1, t, torch::full({rows, 1}, -1.0, p.options()));
        if (teacher) {
          p.mul_(alpha);
          p.narrow(1, 1, V - 1).add_(soft_gradient, (1 - alpha) * tau);
        }
        p.mul_(inv_n);
        if (mm == torch::kFloat) {
          d_hidden.narrow(0, start, rows).copy_(torch::matmul(p, table32));
          d_table.addmm_(p.t(), h);
        } else {
          const auto p_mm = p.to(mm);
          d_hidden.narrow(0, start, rows).copy_(torch::matmul(p_mm, table_mm));
          d_table.add_(torch::matmul(p_mm.t(), h));
        }
      }
    }
    if (need_grad) ctx->save_for_backward({d_hidden.to(hidden.dtype()), d_table.to(table.dtype())});
    return teacher ? (ce * alpha + kl * ((1 - alpha) * tau * tau)) * inv_n : ce * inv_n;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grad_outputs[0];
    return {saved[0] * g, saved[1] * g, {}, {}, {}, {}, {}, {}, {}};
  }
};

}  // namespace

torch::Tensor full_softmax_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& table,
                                         const torch::Tensor& targets, int64_t chunk_rows,
                                         const torch::Tensor& excluded) {
  TORCH_CHECK(hidden.dim() == 2 && table.dim() == 2 && hidden.size(1) == table.size(1),
              "full_softmax_cross_entropy: hidden ", hidden.sizes(), " and table ", table.sizes(), " do not match");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "full_softmax_cross_entropy: targets ", targets.sizes(), " do not match hidden ", hidden.sizes());
  TORCH_CHECK(chunk_rows > 0, "full_softmax_cross_entropy: chunk_rows must be positive, got ", chunk_rows);
  const auto none = torch::empty({0}, table.options().requires_grad(false));  // (autograd inputs must be defined)
  const bool exclude = excluded.defined() && excluded.numel() > 0;
  TORCH_CHECK(!exclude || (excluded.dim() == 2 && excluded.size(0) == hidden.size(0) &&
                           excluded.scalar_type() == torch::kLong && excluded.device() == hidden.device()),
              "full_softmax_cross_entropy: excluded must be (", hidden.size(0), ", L) int64 on ", hidden.device(),
              ", got ", excluded.sizes(), " ", excluded.scalar_type(), " on ", excluded.device());
  return FusedSoftmaxLoss::apply(hidden, table, targets, none, none, exclude ? excluded : none, 1.0, 1.0, chunk_rows);
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
  const auto none = torch::empty({0}, table.options().dtype(torch::kLong));
  return FusedSoftmaxLoss::apply(hidden, table, targets, teacher_hidden.detach(), teacher_table.detach(), none, alpha,
                                 temperature, chunk_rows);
}

torch::Tensor earlier_items(const torch::Tensor& inputs, const torch::Tensor& targets, const torch::Tensor& positions) {
  TORCH_CHECK(inputs.dim() == 2 && targets.numel() == inputs.numel() && positions.dim() == 1,
              "earlier_items: inputs ", inputs.sizes(), " must be (B, T), targets ", targets.sizes(),
              " hold B * T items and positions ", positions.sizes(), " be flat indices");
  const int64_t T = inputs.size(1);
  auto items = inputs.index_select(0, positions.div(T, "floor"));  // (P, T): each position's row
  const auto later = torch::arange(T, positions.options()).unsqueeze(0) > positions.remainder(T).unsqueeze(1);
  items.masked_fill_(later, 0);                                                          // only q <= p
  items.masked_fill_(items == targets.reshape({-1}).index_select(0, positions).unsqueeze(1), 0);  // never the target
  return items;
}

NegativeSampler::NegativeSampler(const std::vector<int64_t>& counts, bool uniform) {
  TORCH_CHECK(counts.size() >= 2, "NegativeSampler: need at least one item");
  auto weights = torch::empty({static_cast<int64_t>(counts.size())}, torch::kDouble);
  auto w = weights.accessor<double, 1>();
  w[0] = 0;
  // +1 smoothing: items not seen in training can still be drawn as negatives.
  for (size_t i = 1; i < counts.size(); ++i) w[i] = uniform ? 1.0 : static_cast<double>(counts[i]) + 1.0;
  probabilities_ = (weights / weights.sum()).to(torch::kFloat);
  log_q_ = probabilities_.clamp_min(1e-30).log();
}

torch::Tensor NegativeSampler::sample(int64_t n, torch::Device device) const {
  auto drawn = torch::multinomial(probabilities_, n, /*replacement=*/true);
  if (!device.is_cuda()) return drawn.to(device);
  // Through pinned memory: a copy from pageable memory would wait for the GPU's queued work.
  return drawn.pin_memory().to(device, /*non_blocking=*/true);
}

torch::Tensor sampled_softmax_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& positive_rows,
                                            const torch::Tensor& negative_rows, const torch::Tensor& targets,
                                            const torch::Tensor& negatives, const torch::Tensor& log_q) {
  TORCH_CHECK(hidden.dim() == 2 && positive_rows.sizes() == hidden.sizes(), "sampled_softmax_cross_entropy: hidden ",
              hidden.sizes(), " and positive rows ", positive_rows.sizes(), " do not match");
  TORCH_CHECK(negative_rows.dim() == 2 && negative_rows.size(1) == hidden.size(1) &&
                  negative_rows.size(0) == negatives.size(0),
              "sampled_softmax_cross_entropy: negative rows ", negative_rows.sizes(), " do not match ",
              negatives.size(0), " negatives of width ", hidden.size(1));
  auto positive = (hidden * positive_rows).sum(1, /*keepdim=*/true) - log_q.index_select(0, targets).unsqueeze(1);  // (N, 1)
  auto negative = torch::matmul(hidden, negative_rows.t()) - log_q.index_select(0, negatives).unsqueeze(0);         // (N, K)
  negative = negative.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(1),
                                  -std::numeric_limits<float>::infinity());
  auto logits = torch::cat({positive, negative}, 1).to(torch::kFloat);
  return torch::nn::functional::cross_entropy(logits, torch::zeros({hidden.size(0)}, targets.options()));
}

}  // namespace freshrec
