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
// Under autocast (bf16 training) the matmuls run in the autocast dtype, as PyTorch's autocast would
// run an output projection; softmax statistics and gradient sums stay fp32.
struct FusedLinearCrossEntropy : public torch::autograd::Function<FusedLinearCrossEntropy> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& hidden, const torch::Tensor& table,
                               const torch::Tensor& targets, int64_t chunk_rows) {
    const int64_t N = hidden.size(0);
    const bool need_grad = hidden.requires_grad() || table.requires_grad();
    const auto device_type = hidden.device().type();
    const auto mm = at::autocast::is_autocast_enabled(device_type) ? at::autocast::get_autocast_dtype(device_type)
                                                                    : torch::kFloat;
    c10::impl::ExcludeDispatchKeyGuard no_autocast(c10::autocast_dispatch_keyset);
    // Softmax statistics in fp32 whatever the input precision.
    auto table32 = table.to(torch::kFloat);
    auto table_mm = table.to(mm);
    auto loss = torch::zeros({}, table32.options());
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
      auto lse = logits.logsumexp(1, /*keepdim=*/true);           // (c, 1)
      loss += (lse - logits.gather(1, t)).sum();
      if (need_grad) {
        // dL/dlogits = (softmax - onehot) / N
        auto p = logits.sub_(lse).exp_();
        p.scatter_add_(1, t, torch::full({rows, 1}, -1.0, p.options()));
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
    return loss * inv_n;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto saved = ctx->get_saved_variables();
    const auto& g = grad_outputs[0];
    return {saved[0] * g, saved[1] * g, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor full_softmax_cross_entropy(const torch::Tensor& hidden, const torch::Tensor& table,
                                         const torch::Tensor& targets, int64_t chunk_rows) {
  TORCH_CHECK(hidden.dim() == 2 && table.dim() == 2 && hidden.size(1) == table.size(1),
              "full_softmax_cross_entropy: hidden ", hidden.sizes(), " and table ", table.sizes(), " do not match");
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "full_softmax_cross_entropy: targets ", targets.sizes(), " do not match hidden ", hidden.sizes());
  TORCH_CHECK(chunk_rows > 0, "full_softmax_cross_entropy: chunk_rows must be positive, got ", chunk_rows);
  return FusedLinearCrossEntropy::apply(hidden, table, targets, chunk_rows);
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
  return torch::multinomial(probabilities_, n, /*replacement=*/true).to(device);
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
