// The sparse embedding ops: CPU against a naive loop, against LibTorch's dense embedding backward and
// dense Adam; edge cases; bit-identical repeats; CUDA against CPU where a GPU is present.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <map>

#include "kernels/sparse_embedding.h"
#include "kernels/sparse_embedding_common.h"

using namespace freshrec::ops;

namespace {

// Indices with many duplicates: a few very popular rows and a long tail.
torch::Tensor skewed_indices(int64_t n, int64_t rows, uint64_t seed) {
  auto g = at::make_generator<at::CPUGeneratorImpl>(seed);
  auto u = torch::rand({n}, g, torch::kDouble);
  return (torch::pow(static_cast<double>(rows), u) - 1).floor().to(torch::kLong).clamp(0, rows - 1);
}

std::map<int64_t, std::vector<float>> naive_row_sums(const torch::Tensor& indices, const torch::Tensor& grad,
                                                     int64_t padding_idx) {
  std::map<int64_t, std::vector<float>> sums;
  auto idx = indices.accessor<int64_t, 1>();
  auto g = grad.accessor<float, 2>();
  for (int64_t i = 0; i < idx.size(0); ++i) {
    if (idx[i] == padding_idx) continue;
    auto& row = sums[idx[i]];
    row.resize(g.size(1), 0.f);
    for (int64_t d = 0; d < g.size(1); ++d) row[d] += g[i][d];
  }
  return sums;
}

struct AdamState {
  torch::Tensor weight, exp_avg, exp_avg_sq, row_step;
  AdamState(int64_t rows, int64_t dim, torch::Device device = torch::kCPU) {
    weight = torch::randn({rows, dim}).to(device);
    exp_avg = torch::zeros({rows, dim}, torch::TensorOptions().device(device));
    exp_avg_sq = torch::zeros({rows, dim}, torch::TensorOptions().device(device));
    row_step = torch::zeros({rows}, torch::TensorOptions().dtype(torch::kLong).device(device));
  }
};

template <typename F>
std::string error_of(F f) {
  try {
    f();
  } catch (const c10::Error& e) {
    return e.what_without_backtrace();
  }
  return "";
}

}  // namespace

TEST(SparseEmbeddingBackward, MatchesNaiveLoopWithPadding) {
  torch::manual_seed(0);
  const auto indices = skewed_indices(5000, 300, 1);
  const auto grad = torch::randn({5000, 24});
  const auto [rows, row_grads] = embedding_backward_sparse(indices, grad, 300, /*padding_idx=*/0);
  const auto expected = naive_row_sums(indices, grad, 0);
  ASSERT_EQ(rows.size(0), static_cast<int64_t>(expected.size()));
  int64_t i = 0;
  for (const auto& [row, sum] : expected) {  // std::map: ascending rows, like the op
    ASSERT_EQ(rows[i].item<int64_t>(), row);
    EXPECT_TRUE(torch::allclose(row_grads[i], torch::tensor(sum), 1e-5, 1e-5)) << "row " << row;
    ++i;
  }
}

TEST(SparseEmbeddingBackward, MatchesLibTorchDenseBackward) {
  torch::manual_seed(1);
  const auto indices = torch::randint(0, 1000, {4096}, torch::kLong);
  const auto grad = torch::randn({4096, 32});
  const auto dense = at::embedding_dense_backward(grad, indices, 1000, /*padding_idx=*/-1, /*scale_grad=*/false);
  const auto [rows, row_grads] = embedding_backward_sparse(indices, grad, 1000);
  EXPECT_TRUE(torch::allclose(dense.index_select(0, rows), row_grads, 1e-5, 1e-5));
  // Rows not touched have zero dense gradient.
  auto touched = torch::zeros({1000}, torch::kBool).index_fill(0, rows, true);
  EXPECT_EQ(dense.index({touched.logical_not()}).abs().sum().item<float>(), 0.f);
}

TEST(SparseEmbeddingBackward, EdgeCasesAndErrors) {
  const auto empty = embedding_backward_sparse(torch::empty({0}, torch::kLong), torch::empty({0, 8}), 10);
  EXPECT_EQ(std::get<0>(empty).size(0), 0);
  EXPECT_EQ(std::get<1>(empty).sizes(), (std::vector<int64_t>{0, 8}));
  const auto single = embedding_backward_sparse(torch::full({7}, 3, torch::kLong), torch::ones({7, 2}), 10);
  EXPECT_EQ(std::get<0>(single).item<int64_t>(), 3);
  EXPECT_TRUE(torch::equal(std::get<1>(single), torch::full({1, 2}, 7.f)));
  const auto all_padding = embedding_backward_sparse(torch::zeros({4}, torch::kLong), torch::ones({4, 2}), 10, 0);
  EXPECT_EQ(std::get<0>(all_padding).size(0), 0);

  const auto grad = torch::ones({3, 2});
  EXPECT_NE(error_of([&] { embedding_backward_sparse(torch::tensor({1, 12, 2}), grad, 10); })
                .find("index 12 at position 1 is out of range [0, 10)"),
            std::string::npos);
  EXPECT_NE(error_of([&] { embedding_backward_sparse(torch::tensor({1, 2, -1}), grad, 10); }).find("index -1 at position 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { embedding_backward_sparse(torch::tensor({1, 2}), grad, 10); }).find("3 rows but there are 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { embedding_backward_sparse(torch::tensor({1, 2, 3}).to(torch::kInt), grad, 10); })
                .find("must be int64"),
            std::string::npos);
  EXPECT_NE(error_of([&] { embedding_backward_sparse(torch::tensor({1, 2, 3}), grad.to(torch::kDouble), 10); })
                .find("float32"),
            std::string::npos);
}

// The sorted view both devices build with tensor ops, sized by the lookup count and never read back
// (the CUDA bodies loop over its device-side counts): its invariants, checked on the CPU.
TEST(SparseEmbeddingSegments, AreSizedByLookupsAndTileTheSortedPositions) {
  const int64_t N = 5000, rows = 300, piece = 8;
  auto indices = skewed_indices(N, rows, 11);  // row 0 (padding) is frequent; one row takes many pieces
  indices.index_put_({torch::arange(0, N, 7)}, 0);
  const Segments seg = sort_into_segments(indices, /*padding_idx=*/0);
  const auto [unique_rows, unused, counts] = at::_unique2(indices.masked_select(indices != 0), true, false, true);
  const int64_t U = seg.host_count();
  ASSERT_EQ(U, unique_rows.size(0));
  EXPECT_EQ(seg.rows.size(0), N);
  EXPECT_TRUE(torch::equal(seg.rows.narrow(0, 0, U), unique_rows));
  const auto offsets = seg.offsets.accessor<int64_t, 1>();
  const auto order = seg.order.accessor<int64_t, 1>();
  const auto idx = indices.accessor<int64_t, 1>();
  const int64_t padding = (indices == 0).sum().item<int64_t>();
  EXPECT_EQ(offsets[U], N - padding);  // the padding positions come last
  for (int64_t s = 0; s < U; ++s) {
    ASSERT_EQ(offsets[s + 1] - offsets[s], counts[s].item<int64_t>()) << s;
    for (int64_t q = offsets[s]; q < offsets[s + 1]; ++q) {
      ASSERT_EQ(idx[order[q]], seg.rows[s].item<int64_t>());
      if (q > offsets[s]) ASSERT_LT(order[q - 1], order[q]);  // stable: positions in their original order
    }
  }
  for (int64_t q = offsets[U]; q < N; ++q) ASSERT_EQ(idx[order[q]], 0);

  const Pieces pieces = make_pieces(seg, piece);
  const auto begin = pieces.begin.accessor<int64_t, 1>();
  const auto first = pieces.first.accessor<int64_t, 1>();
  int64_t expected_pieces = 0;
  for (int64_t s = 0; s < U; ++s) {
    ASSERT_EQ(first[s], expected_pieces) << s;
    const int64_t n = offsets[s + 1] - offsets[s];
    expected_pieces += (n + piece - 1) / piece;
    for (int64_t p = first[s]; p < expected_pieces; ++p) {  // runs of `piece` inside the segment, the last shorter
      EXPECT_EQ(begin[p], offsets[s] + (p - first[s]) * piece);
      EXPECT_EQ(begin[p + 1], std::min(begin[p] + piece, offsets[s + 1]));
    }
  }
  EXPECT_EQ(first[U], expected_pieces);
  EXPECT_GT(expected_pieces, U);  // the popular rows were cut

  // Without padding the counts run to N; an empty lookup is empty.
  const Segments all = sort_into_segments(indices, /*padding_idx=*/-1);
  EXPECT_EQ(all.host_count(), U + 1);
  EXPECT_EQ(all.offsets[all.host_count()].item<int64_t>(), N);
  EXPECT_EQ(make_pieces(all, piece).first[all.host_count()].item<int64_t>(),
            make_pieces(all, piece).first[N].item<int64_t>());
  EXPECT_EQ(sort_into_segments(torch::empty({0}, torch::kLong), 0).host_count(), 0);
}

TEST(SparseEmbeddingBackward, BitIdenticalRepeats) {
  torch::manual_seed(2);
  const auto indices = skewed_indices(20000, 5000, 3);
  const auto grad = torch::randn({20000, 16});
  const auto a = embedding_backward_sparse(indices, grad, 5000);
  const auto b = embedding_backward_sparse(indices, grad, 5000);
  EXPECT_TRUE(torch::equal(std::get<1>(a), std::get<1>(b)));
}

TEST(RowwiseAdam, AllRowsTouchedEqualsDenseAdam) {
  for (const bool adamw : {false, true}) {
    torch::manual_seed(3);
    AdamState ours(50, 8);
    auto reference = ours.weight.clone().requires_grad_(true);
    std::unique_ptr<torch::optim::Optimizer> dense;
    if (adamw)
      dense = std::make_unique<torch::optim::AdamW>(std::vector<torch::Tensor>{reference},
                                                    torch::optim::AdamWOptions(0.01).weight_decay(0.1));
    else
      dense = std::make_unique<torch::optim::Adam>(std::vector<torch::Tensor>{reference},
                                                   torch::optim::AdamOptions(0.01).weight_decay(0.1));
    RowwiseAdamOptions o;
    o.lr = 0.01;
    o.weight_decay = 0.1;
    o.decoupled_weight_decay = adamw;
    const auto all_rows = torch::arange(50, torch::kLong);
    for (int64_t step = 1; step <= 5; ++step) {
      const auto grad = torch::randn({50, 8});
      rowwise_adam_(ours.weight, ours.exp_avg, ours.exp_avg_sq, ours.row_step, all_rows, grad, step, o);
      reference.mutable_grad() = grad.clone();
      dense->step();
    }
    EXPECT_TRUE(torch::allclose(ours.weight, reference.detach(), 1e-6, 1e-6)) << (adamw ? "AdamW" : "Adam");
  }
}

TEST(RowwiseAdam, LazyRowsAndPerRowStep) {
  torch::manual_seed(4);
  AdamState s(10, 4);
  const auto row2_start = s.weight[2].clone(), row7_start = s.weight[7].clone();
  RowwiseAdamOptions o;
  o.lr = 0.1;
  o.per_row_step = true;
  const auto grad = torch::ones({1, 4});
  rowwise_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, torch::tensor({2}), grad, /*step=*/1, o);
  rowwise_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, torch::tensor({5}), grad, /*step=*/2, o);
  const auto row5 = s.weight[5].clone();
  rowwise_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, torch::tensor({2}), grad, /*step=*/3, o);
  // Lazy: untouched rows keep weights and moments.
  EXPECT_TRUE(torch::equal(s.weight[7], row7_start));
  EXPECT_EQ(s.exp_avg[7].abs().sum().item<float>(), 0.f);
  EXPECT_TRUE(torch::equal(s.weight[5], row5));
  EXPECT_EQ(s.row_step[2].item<int64_t>(), 2);  // its second update, though the global step is 3
  EXPECT_EQ(s.row_step[5].item<int64_t>(), 1);
  // A constant gradient moves a row by lr per update once bias-corrected with the row's own count
  // (t = 1, 2); corrected with the global step (t = 1, 3) the second move would be 0.07 instead.
  EXPECT_TRUE(torch::allclose(s.weight[2], row2_start - 0.2, 1e-5, 1e-5)) << s.weight[2] - row2_start;

  AdamState global(10, 4);
  global.weight.copy_(row2_start.expand({10, 4}));
  o.per_row_step = false;
  rowwise_adam_(global.weight, global.exp_avg, global.exp_avg_sq, global.row_step, torch::tensor({2}), grad, 1, o);
  rowwise_adam_(global.weight, global.exp_avg, global.exp_avg_sq, global.row_step, torch::tensor({2}), grad, 3, o);
  EXPECT_FALSE(torch::allclose(global.weight[2], row2_start - 0.2, 1e-3, 1e-3));
  EXPECT_EQ(global.row_step[2].item<int64_t>(), 0);  // not counted without per_row_step
}

TEST(RowwiseAdam, StridedRowsAreReadInPlaceAndRepeatedRowsRefused) {
  torch::manual_seed(4);
  const auto grad = torch::randn({2, 8});
  AdamState strided(10, 8), packed(10, 8);
  packed.weight.copy_(strided.weight);
  RowwiseAdamOptions o;
  const auto every_other = torch::tensor({2, 9, 5, 7}, torch::kLong).slice(0, 0, 4, 2);  // {2, 5}, stride 2
  ASSERT_FALSE(every_other.is_contiguous());
  rowwise_adam_(strided.weight, strided.exp_avg, strided.exp_avg_sq, strided.row_step, every_other, grad, 1, o);
  rowwise_adam_(packed.weight, packed.exp_avg, packed.exp_avg_sq, packed.row_step, torch::tensor({2, 5}), grad, 1, o);
  EXPECT_TRUE(torch::equal(strided.weight, packed.weight));
  EXPECT_TRUE(torch::equal(strided.exp_avg, packed.exp_avg));
  const auto before = packed.weight.clone();
  try {
    rowwise_adam_(packed.weight, packed.exp_avg, packed.exp_avg_sq, packed.row_step, torch::tensor({3, 5, 3}),
                  torch::randn({3, 8}), 2, o);
    ADD_FAILURE() << "repeated rows were accepted";
  } catch (const c10::Error& e) {
    EXPECT_NE(std::string(e.what()).find("row 3 appears more than once"), std::string::npos) << e.what();
  }
  EXPECT_TRUE(torch::equal(packed.weight, before));
}

TEST(FusedBackwardAdam, EqualsSparseBackwardThenRowwiseAdamBitwise) {
  torch::manual_seed(5);
  const auto indices = skewed_indices(8192, 2000, 6);
  const auto grad = torch::randn({8192, 16});
  AdamState a(2000, 16);
  AdamState b(2000, 16);
  b.weight.copy_(a.weight);
  RowwiseAdamOptions o;
  o.per_row_step = true;
  for (int64_t step = 1; step <= 3; ++step) {
    const auto [rows, row_grads] = embedding_backward_sparse(indices, grad * step, 2000, 0);
    rowwise_adam_(a.weight, a.exp_avg, a.exp_avg_sq, a.row_step, rows, row_grads, step, o);
    embedding_backward_adam_(b.weight, b.exp_avg, b.exp_avg_sq, b.row_step, indices, grad * step, 0, step, o);
  }
  EXPECT_TRUE(torch::equal(a.weight, b.weight));
  EXPECT_TRUE(torch::equal(a.exp_avg_sq, b.exp_avg_sq));
  EXPECT_TRUE(torch::equal(a.row_step, b.row_step));
  EXPECT_EQ(a.row_step[0].item<int64_t>(), 0);  // the padding row is never updated
}

TEST(FusedBackwardAdam, ASkipFlagOnTheDeviceChangesNothing) {
  torch::manual_seed(9);
  const auto indices = skewed_indices(4096, 500, 10);
  const auto grad = torch::randn({4096, 8});
  AdamState guarded(500, 8), plain(500, 8);
  plain.weight.copy_(guarded.weight);
  RowwiseAdamOptions o;
  o.per_row_step = true;
  embedding_backward_adam_(guarded.weight, guarded.exp_avg, guarded.exp_avg_sq, guarded.row_step, indices, grad, 0, 1,
                           o, /*check_indices=*/true, torch::zeros({}));  // 0: applied
  embedding_backward_adam_(plain.weight, plain.exp_avg, plain.exp_avg_sq, plain.row_step, indices, grad, 0, 1, o);
  EXPECT_TRUE(torch::equal(guarded.weight, plain.weight));
  const auto weight = guarded.weight.clone(), exp_avg = guarded.exp_avg.clone(), row_step = guarded.row_step.clone();
  embedding_backward_adam_(guarded.weight, guarded.exp_avg, guarded.exp_avg_sq, guarded.row_step, indices, grad, 0, 2,
                           o, /*check_indices=*/false, torch::ones({}));  // 1: skipped
  EXPECT_TRUE(torch::equal(guarded.weight, weight));
  EXPECT_TRUE(torch::equal(guarded.exp_avg, exp_avg));
  EXPECT_TRUE(torch::equal(guarded.row_step, row_step));
  EXPECT_NE(error_of([&] {
              embedding_backward_adam_(guarded.weight, guarded.exp_avg, guarded.exp_avg_sq, guarded.row_step, indices,
                                       grad, 0, 2, o, true, torch::ones({}, torch::kDouble));
            }).find("skip must be one float32 value"),
            std::string::npos);
}

TEST(FusedBackwardAdam, RejectsMismatchedState) {
  AdamState s(10, 4);
  auto wrong = torch::zeros({10, 3});
  RowwiseAdamOptions o;
  EXPECT_NE(error_of([&] {
              embedding_backward_adam_(s.weight, wrong, s.exp_avg_sq, s.row_step, torch::tensor({1}), torch::ones({1, 4}),
                                       -1, 1, o);
            }).find("moments must have the weight's shape"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              embedding_backward_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, torch::tensor({10}),
                                       torch::ones({1, 4}), -1, 1, o);
            }).find("index 10 at position 0 is out of range [0, 10)"),
            std::string::npos);
  EXPECT_NE(error_of([&] {
              embedding_backward_adam_(s.weight, s.exp_avg, s.exp_avg_sq, s.row_step, torch::tensor({1}),
                                       torch::ones({1, 4}), -1, 0, o);
            }).find("step must be >= 1"),
            std::string::npos);
}

TEST(SparseEmbeddingCuda, MatchesCpuOverDtypes) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine: the CUDA ops are compiled, not run";
  torch::manual_seed(7);
  const auto indices = skewed_indices(65536, 100000, 8);  // one row takes thousands of positions
  const auto grad = torch::randn({65536, 64});
  const auto [cpu_rows, cpu_grads] = embedding_backward_sparse(indices, grad, 100000, 0);
  for (const auto dtype : {torch::kFloat, torch::kHalf, torch::kBFloat16}) {
    const auto g = grad.to(dtype);
    const auto [rows, grads] = embedding_backward_sparse(indices.cuda(), g.cuda(), 100000, 0);
    const auto [ref_rows, ref_grads] = embedding_backward_sparse(indices, g.to(torch::kFloat), 100000, 0);
    EXPECT_TRUE(torch::equal(rows.cpu(), ref_rows));
    EXPECT_TRUE(torch::allclose(grads.cpu(), ref_grads, 1e-4, 1e-3)) << dtype;
    const auto [again_rows, again] = embedding_backward_sparse(indices.cuda(), g.cuda(), 100000, 0);
    EXPECT_TRUE(torch::equal(grads, again)) << "CUDA repeat not bit-identical for " << dtype;
  }
  AdamState on_cpu(100000, 64), on_gpu(100000, 64, torch::kCUDA);
  on_gpu.weight.copy_(on_cpu.weight);
  RowwiseAdamOptions o;
  o.per_row_step = true;
  for (int64_t step = 1; step <= 3; ++step) {
    embedding_backward_adam_(on_cpu.weight, on_cpu.exp_avg, on_cpu.exp_avg_sq, on_cpu.row_step, indices, grad, 0,
                             step, o);
    embedding_backward_adam_(on_gpu.weight, on_gpu.exp_avg, on_gpu.exp_avg_sq, on_gpu.row_step, indices.cuda(),
                             grad.cuda(), 0, step, o);
  }
  EXPECT_TRUE(torch::allclose(on_gpu.weight.cpu(), on_cpu.weight, 1e-5, 1e-5));
  EXPECT_TRUE(torch::equal(on_gpu.row_step.cpu(), on_cpu.row_step));
}
