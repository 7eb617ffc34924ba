// Autograd routing of embedding lookups to the sparse gradient path; see the header.
#include "kernels/sparse_embedding_autograd.h"

namespace freshrec::ops {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

struct SparseEmbeddingLookup : public torch::autograd::Function<SparseEmbeddingLookup> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& weight, const torch::Tensor& indices,
                               SparseGradients* sink) {
    TORCH_CHECK(weight.dim() == 2, "sparse_embedding_lookup: weight must be (rows, dim), got ", weight.sizes());
    TORCH_CHECK(indices.scalar_type() == torch::kLong, "sparse_embedding_lookup: indices must be int64, got ",
                indices.scalar_type());
    ctx->saved_data["sink"] = reinterpret_cast<int64_t>(sink);
    ctx->save_for_backward({indices});
    auto flat = indices.reshape({-1});
    auto shape = indices.sizes().vec();
    shape.push_back(weight.size(1));
    return weight.index_select(0, flat).view(shape);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    auto* sink = reinterpret_cast<SparseGradients*>(ctx->saved_data["sink"].toInt());
    const auto indices = ctx->get_saved_variables()[0].reshape({-1});
    const auto& grad = grad_outputs[0];
    sink->indices.push_back(indices);
    sink->grad_outputs.push_back(grad.reshape({indices.size(0), -1}));
    return {torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor sparse_embedding_lookup(const torch::Tensor& weight, const torch::Tensor& indices, SparseGradients& sink) {
  return SparseEmbeddingLookup::apply(weight, indices, &sink);
}

}  // namespace freshrec::ops
