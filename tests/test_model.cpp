// Torch tests: the model's causality and padding, the losses against LibTorch references, ranking,
// checkpoints (round trip, resume) and a short training run that must beat popularity.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <ATen/autocast_mode.h>
#ifdef FRESHREC_WITH_CUDA
#include <c10/cuda/CUDAFunctions.h>
#endif

#include <atomic>
#include <filesystem>
#include <functional>
#include <optional>
#include <fstream>
#include <sstream>
#include <thread>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/generator.h"
#include "engine/data/readers.h"
#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/export/publisher.h"
#include "engine/export/torchscript.h"
#include "engine/io/remove_tree.h"
#include "engine/runtime.h"
#include "engine/train/dense_adam.h"
#include "engine/train/learner.h"
#include "engine/train/losses.h"
#include "engine/train/sparse_adam.h"
#include "engine/train/trainer.h"
#include "models/sasrec.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using namespace freshrec;

namespace {

SASRecOptions small_options(int64_t items = 30) {
  SASRecOptions o;
  o.num_items = items;
  o.hidden = 16;
  o.blocks = 2;
  o.heads = 2;
  o.dropout = 0.1;
  o.maxlen = 12;
  return o;
}

// The small model with the given block form, seeded, in eval mode.
SASRec untrained_model(const std::string& block) {
  torch::manual_seed(0);
  auto o = small_options();
  o.block = block;
  SASRec model(o);
  model->eval();
  return model;
}

std::string temp_folder(const std::string& name) {
  const auto p = fs::temp_directory_path() / ("freshrec-model-" + std::to_string(::getpid()) + "-" + name);
  remove_tree(p);
  fs::create_directories(p);
  return p.string();
}

// A small generated data set and a config that trains on it in seconds.
Config small_training_config(const std::string& out) {
  Config c;
  c.apply_override("generator.users=600");
  c.apply_override("generator.items=150");
  c.apply_override("generator.clusters=10");
  c.apply_override("generator.events_per_user=25");
  c.apply_override("generator.sequential=0.8");
  c.apply_override("model.hidden=32");
  c.apply_override("model.maxlen=20");
  c.apply_override("model.dropout=0.1");
  c.apply_override("train.batch_size=64");
  c.apply_override("train.lr=0.003");
  c.apply_override("train.threads=2");
  c.apply_override("train.device=cpu");
  c.apply_override("train.log_every_seconds=1000");
  c.apply_override("train.output_dir=" + out);
  return c;
}

// Every parameter of the two checkpoints' models is bit for bit the same.
void expect_same_weights(const std::string& a_path, const std::string& b_path) {
  SASRec a = load_checkpoint_model(a_path, torch::kCPU), b = load_checkpoint_model(b_path, torch::kCPU);
  const auto pb = b->named_parameters();
  for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
}

}  // namespace

TEST(SASRec, IsCausal) {
  for (const char* block : {"prenorm", "original"}) {
    SASRec model = untrained_model(block);
    auto items = torch::tensor({{0, 0, 3, 4, 5, 6, 7, 8}}, torch::kLong);
    auto changed = items.clone();
    changed[0][6] = 20;  // change a later item
    auto a = model->forward(items), b = model->forward(changed);
    EXPECT_TRUE(torch::equal(a.narrow(1, 0, 6), b.narrow(1, 0, 6))) << block;  // earlier positions unchanged
    EXPECT_FALSE(torch::allclose(a.narrow(1, 6, 2), b.narrow(1, 6, 2))) << block;
  }
}

TEST(SASRec, LeftPaddingDoesNotChangeTheAnswer) {
  for (const char* block : {"prenorm", "original"}) {
    SASRec model = untrained_model(block);
    auto short_pad = torch::tensor({{0, 3, 4, 5}}, torch::kLong);
    auto long_pad = torch::tensor({{0, 0, 0, 0, 0, 0, 3, 4, 5}}, torch::kLong);
    EXPECT_TRUE(torch::allclose(model->last_hidden(short_pad), model->last_hidden(long_pad), 1e-5, 1e-6)) << block;
    auto scores = model->score_all(model->last_hidden(short_pad));
    EXPECT_EQ(scores.sizes(), (std::vector<int64_t>{1, 31}));
  }
}

// last_hidden computes the last block for the newest position alone: the same values as the full
// forward's newest position (within 1e-6), and the same gradients, for both block forms, one block or three, with
// padded and all-padding rows.
TEST(SASRec, LastHiddenIsTheFullForwardsNewestPosition) {
  for (const char* block : {"prenorm", "original"}) {
    for (int64_t blocks : {1, 3}) {
      torch::manual_seed(7);
      auto o = small_options();
      o.block = block, o.blocks = blocks, o.heads = 2, o.dropout = 0.0;
      SASRec model(o);
      for (auto& p : model->parameters()) p.detach().add_(torch::randn_like(p) * 0.05);
      auto items = torch::randint(1, o.num_items + 1, {6, o.maxlen}, torch::kLong);
      items.narrow(1, 0, 3).zero_();   // padded rows ...
      items[4].fill_(0);               // ... an empty history ...
      items[5].narrow(0, 0, o.maxlen - 1).zero_();  // ... and one item alone
      model->train();
      const auto fast = model->last_hidden(items);
      const auto full = model->forward(items).select(1, -1);
      EXPECT_LT((fast - full).abs().max().item<double>(), 1e-6) << block << " " << blocks;
      auto weights = torch::randn_like(full);
      auto grads = [&](const torch::Tensor& out) {
        model->zero_grad();
        (out * weights).sum().backward();
        std::vector<torch::Tensor> g;
        for (const auto& p : model->parameters()) g.push_back(p.grad().clone());
        return g;
      };
      const auto g_full = grads(model->forward(items).select(1, -1));
      const auto g_fast = grads(model->last_hidden(items));
      // Gradients sum over every position: within float rounding of their size.
      for (size_t i = 0; i < g_full.size(); ++i)
        EXPECT_LT((g_fast[i] - g_full[i]).abs().max().item<double>(),
                  1e-6 * std::max(1.0, g_full[i].abs().max().item<double>()) * 4)
            << block << " " << blocks << " parameter " << i;
    }
  }
}

TEST(SASRec, OriginalBlockIsTheAuthorsFormula) {
  // One block by hand: q = LN1(x); h = LN2(q + Wo Attention(Wq q, Wk x, Wv x)); out = h + W2 relu(W1 h).
  torch::manual_seed(4);
  SASRecBlock block(8, 1, 8, 0.0, /*original=*/true);
  block->eval();
  torch::NoGradGuard no_grad;
  for (auto& p : block->parameters()) p.add_(torch::randn_like(p) * 0.1);
  auto x = torch::randn({2, 5, 8});
  auto mask = torch::ones({5, 5}, torch::kBool).tril().view({1, 1, 5, 5}).expand({2, 1, 5, 5});
  auto P = block->named_parameters();
  auto ln = [](const torch::Tensor& t, const torch::Tensor& w, const torch::Tensor& b) {
    return torch::layer_norm(t, {8}, w, b, 1e-5);
  };
  auto q_in = ln(x, P["attention_norm.weight"], P["attention_norm.bias"]);
  auto W = P["qkv.weight"], bias = P["qkv.bias"];
  auto q = torch::linear(q_in, W.narrow(0, 0, 8), bias.narrow(0, 0, 8));
  auto k = torch::linear(x, W.narrow(0, 8, 8), bias.narrow(0, 8, 8));
  auto v = torch::linear(x, W.narrow(0, 16, 8), bias.narrow(0, 16, 8));
  auto weights = torch::softmax((torch::matmul(q, k.transpose(1, 2)) / std::sqrt(8.0)).masked_fill(~mask.squeeze(1), -1e9), -1);
  auto h = ln(q_in + torch::linear(torch::matmul(weights, v), P["attention_out.weight"], P["attention_out.bias"]),
              P["ffn_norm.weight"], P["ffn_norm.bias"]);
  auto expected = h + torch::linear(torch::relu(torch::linear(h, P["ffn_in.weight"], P["ffn_in.bias"])),
                                    P["ffn_out.weight"], P["ffn_out.bias"]);
  EXPECT_TRUE(torch::allclose(block->forward(x, mask), expected, 1e-5, 1e-5));
}

TEST(SASRec, SetDropoutReachesEveryLayer) {
  for (const std::string block : {"prenorm", "original"}) {
    auto o = small_options();
    o.dropout = 0.5;
    o.block = block;
    torch::manual_seed(4);
    SASRec model(o);
    auto items = torch::randint(1, 30, {4, 12}, torch::kLong);
    model->eval();
    const auto expected = model->forward(items);
    model->train();
    EXPECT_FALSE(torch::allclose(model->forward(items), expected)) << block << ": dropout 0.5 changes nothing";
    model->set_dropout(0.0);  // no dropout left anywhere: training mode computes the eval answer
    EXPECT_TRUE(torch::allclose(model->forward(items), expected, 1e-5, 1e-6)) << block;
    EXPECT_EQ(model->options().dropout, 0.0);
    EXPECT_THROW(model->set_dropout(1.0), std::invalid_argument);
  }
}

TEST(SASRec, RejectsBadOptionsAndInputs) {
  auto o = small_options();
  o.heads = 3;  // does not divide 16
  EXPECT_THROW(SASRec{o}, std::invalid_argument);
  SASRec model(small_options());
  EXPECT_THROW(model->forward(torch::zeros({1, 13}, torch::kLong)), c10::Error);  // longer than maxlen
}

TEST(Losses, FusedFullSoftmaxMatchesLibTorch) {
  torch::manual_seed(1);
  auto hidden = torch::randn({37, 8}, torch::requires_grad());
  auto table = torch::randn({11, 8}, torch::requires_grad());
  auto targets = torch::randint(1, 11, {37}, torch::kLong);
  auto ours = full_softmax_cross_entropy(hidden, table, targets, /*chunk_rows=*/5);
  ours.backward();
  auto dh = hidden.grad().clone(), dt = table.grad().clone();
  hidden.mutable_grad().zero_();
  table.mutable_grad().zero_();
  auto logits = torch::matmul(hidden, table.t());
  logits = logits.index_fill(1, torch::tensor({0}), -std::numeric_limits<float>::infinity());
  auto reference = torch::nn::functional::cross_entropy(logits, targets);
  reference.backward();
  EXPECT_NEAR(ours.item<double>(), reference.item<double>(), 1e-5);
  EXPECT_TRUE(torch::allclose(dh, hidden.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(dt, table.grad(), 1e-5, 1e-6));
  EXPECT_EQ(dt[0].abs().sum().item<float>(), 0.0f);  // padding row gets no gradient
}

TEST(Losses, ExcludedItemsLeaveTheSoftmax) {
  torch::manual_seed(3);
  const int64_t N = 23, V = 13;
  auto hidden = torch::randn({N, 8}, torch::requires_grad());
  auto table = torch::randn({V, 8}, torch::requires_grad());
  auto targets = torch::randint(1, V, {N}, torch::kLong);
  // Up to 4 excluded items a row (0: none), never the row's target.
  auto excluded = torch::randint(0, V, {N, 4}, torch::kLong);
  excluded.masked_fill_(excluded == targets.unsqueeze(1), 0);
  auto ours = full_softmax_cross_entropy(hidden, table, targets, /*chunk_rows=*/5, excluded);
  ours.backward();
  auto dh = hidden.grad().clone(), dt = table.grad().clone();
  hidden.mutable_grad().zero_();
  table.mutable_grad().zero_();
  auto logits = torch::matmul(hidden, table.t());
  auto mask = torch::zeros({N, V}, torch::kBool).scatter_(1, excluded, true);
  mask.select(1, 0).fill_(true);
  auto reference = torch::nn::functional::cross_entropy(logits.masked_fill(mask, -std::numeric_limits<float>::infinity()), targets);
  reference.backward();
  EXPECT_NEAR(ours.item<double>(), reference.item<double>(), 1e-5);
  EXPECT_TRUE(torch::allclose(dh, hidden.grad(), 1e-5, 1e-6));
  EXPECT_TRUE(torch::allclose(dt, table.grad(), 1e-5, 1e-6));
  // Leaving items out lowers the loss (the target competes with fewer items).
  EXPECT_LT(ours.item<double>(), full_softmax_cross_entropy(hidden, table, targets).item<double>());
  EXPECT_THROW(full_softmax_cross_entropy(hidden, table, targets, 5, excluded.narrow(0, 0, 3)), c10::Error);
}

TEST(Losses, EarlierItemsAreEachPositionsPastButNeverItsTarget) {
  // Left-padded rows: [0, 5, 7, 5] -> targets [0, 7, 5, 9]; the last position's past is {5, 7, 5}.
  auto inputs = torch::tensor({0, 5, 7, 5}, torch::kLong).view({1, 4});
  auto targets = torch::tensor({0, 7, 5, 9}, torch::kLong).view({1, 4});
  auto e = earlier_items(inputs, targets, torch::tensor({1, 2, 3}, torch::kLong)).contiguous();
  ASSERT_EQ(e.sizes(), (std::vector<int64_t>{3, 4}));
  auto row = [&](int64_t r) { return std::vector<int64_t>(e[r].data_ptr<int64_t>(), e[r].data_ptr<int64_t>() + 4); };
  EXPECT_EQ(row(0), (std::vector<int64_t>{0, 5, 0, 0}));  // before target 7: item 5
  EXPECT_EQ(row(1), (std::vector<int64_t>{0, 0, 7, 0}));  // before target 5: 5 and 7, but 5 is the target (a repeat)
  EXPECT_EQ(row(2), (std::vector<int64_t>{0, 5, 7, 5}));  // before target 9: all
  // A second row: positions index the flattened batch.
  auto two = earlier_items(torch::cat({inputs, torch::tensor({0, 0, 3, 4}, torch::kLong).view({1, 4})}),
                           torch::cat({targets, torch::tensor({0, 0, 4, 6}, torch::kLong).view({1, 4})}),
                           torch::tensor({7}, torch::kLong)).contiguous();
  EXPECT_EQ(std::vector<int64_t>(two.data_ptr<int64_t>(), two.data_ptr<int64_t>() + 4), (std::vector<int64_t>{0, 0, 3, 4}));
}

TEST(Losses, SampledSoftmaxWithEveryItemIsFullSoftmax) {
  torch::manual_seed(2);
  auto hidden = torch::randn({9, 8});
  auto table = torch::randn({7, 8});
  auto targets = torch::randint(1, 7, {9}, torch::kLong);
  // All items as negatives with a uniform Q: the correction is a constant, and the positive's own
  // copy among the negatives is masked, so this is exactly the full softmax.
  auto negatives = torch::arange(1, 7, torch::kLong);
  auto log_q = torch::full({7}, std::log(1.0 / 6));
  auto sampled = sampled_softmax_cross_entropy(hidden, table.index_select(0, targets), table.index_select(0, negatives),
                                               targets, negatives, log_q);
  auto full = full_softmax_cross_entropy(hidden, table, targets);
  EXPECT_NEAR(sampled.item<double>(), full.item<double>(), 1e-5);

  NegativeSampler sampler({0, 100, 1, 1}, /*uniform=*/false);
  auto draws = sampler.sample(2000, torch::kCPU);
  EXPECT_EQ(draws.min().item<int64_t>() >= 1, true);
  EXPECT_GT((draws == 1).sum().item<int64_t>(), 1800);  // item 1 holds 101/105 of the mass
}

namespace {

// A few parameters of mixed shapes with fixed gradients per step, for the optimizer tests.
std::vector<torch::Tensor> adam_test_parameters() {
  torch::manual_seed(3);
  return {torch::randn({7, 5}).requires_grad_(), torch::randn({5}).requires_grad_(),
          torch::randn({3, 2, 4}).requires_grad_()};
}

void set_gradients(std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  for (auto& p : params) p.mutable_grad() = torch::randn_like(p) * (step % 2 ? 0.1 : 3.0);
}

template <class Fused, class Reference, class Options>
void expect_fused_matches_reference(const Options& options) {
  auto fused_params = adam_test_parameters(), reference_params = adam_test_parameters();
  Fused fused(fused_params, options);
  Reference reference(reference_params, options);
  for (int step = 0; step < 6; ++step) {
    set_gradients(fused_params, step);
    set_gradients(reference_params, step);
    if (step == 4) {  // a parameter without a gradient
      reference_params[1].mutable_grad() = torch::Tensor();
      fused_params[1].mutable_grad() = torch::Tensor();
    }
    fused.step();
    reference.step();
    for (size_t i = 0; i < fused_params.size(); ++i)
      ASSERT_TRUE(torch::allclose(fused_params[i], reference_params[i], 1e-5, 1e-6)) << "step " << step << " param " << i;
  }
}

}  // namespace

TEST(DenseAdam, FusedMatchesLibTorchAdamAndAdamW) {
  expect_fused_matches_reference<FusedAdam, torch::optim::Adam>(torch::optim::AdamOptions(0.01).betas({0.9, 0.98}));
  expect_fused_matches_reference<FusedAdam, torch::optim::Adam>(torch::optim::AdamOptions(0.01).weight_decay(0.1));
  expect_fused_matches_reference<FusedAdamW, torch::optim::AdamW>(torch::optim::AdamWOptions(0.01).weight_decay(0.1));
}

TEST(DenseAdam, StateRoundTripsThroughLibTorchAdamsFormat) {
  // Two steps with LibTorch's Adam, saved; loaded into the fused one, which continues as LibTorch's
  // would: its step counts (bias corrections) and moments come from the file.
  auto a = adam_test_parameters(), b = adam_test_parameters();
  torch::optim::Adam first(a, torch::optim::AdamOptions(0.01));
  for (int step = 0; step < 2; ++step) set_gradients(a, step), first.step();
  std::stringstream saved;
  {
    torch::serialize::OutputArchive archive;
    first.save(archive);
    archive.save_to(saved);
  }
  for (size_t i = 0; i < a.size(); ++i) b[i].detach().copy_(a[i].detach());
  FusedAdam fused(b, torch::optim::AdamOptions(0.01));
  set_gradients(b, 9), fused.step();  // its own state first, then replaced by the loaded one
  for (size_t i = 0; i < a.size(); ++i) b[i].detach().copy_(a[i].detach());
  torch::serialize::InputArchive archive;
  archive.load_from(saved);
  fused.load(archive);
  for (int step = 2; step < 5; ++step) {
    set_gradients(a, step), first.step();
    set_gradients(b, step), fused.step();
  }
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::allclose(a[i], b[i], 1e-5, 1e-6)) << "param " << i;
  const auto& state = static_cast<const torch::optim::AdamParamState&>(*fused.state().at(b[0].unsafeGetTensorImpl()));
  EXPECT_EQ(state.step(), 5);
}

TEST(DenseAdam, AStepGuardedOnTheDeviceLeavesParametersAndMomentsAlone) {
  auto a = adam_test_parameters(), b = adam_test_parameters();
  FusedAdam guarded(a, torch::optim::AdamOptions(0.01)), plain(b, torch::optim::AdamOptions(0.01));
  set_gradients(a, 0), guarded.step_unless(torch::zeros({}));  // 0: applied, as a plain step
  set_gradients(b, 0), plain.step();
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(torch::equal(a[i], b[i])) << "param " << i;
  std::vector<torch::Tensor> before, moments;
  for (const auto& p : a) {
    before.push_back(p.detach().clone());
    moments.push_back(static_cast<const torch::optim::AdamParamState&>(*guarded.state().at(p.unsafeGetTensorImpl()))
                          .exp_avg_sq()
                          .clone());
  }
  set_gradients(a, 1), guarded.step_unless(torch::ones({}));  // 1: skipped
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(torch::equal(a[i], before[i])) << "param " << i;
    const auto& state = static_cast<const torch::optim::AdamParamState&>(*guarded.state().at(a[i].unsafeGetTensorImpl()));
    EXPECT_TRUE(torch::equal(state.exp_avg_sq(), moments[i])) << "param " << i;
    EXPECT_EQ(state.step(), 2);  // the count advances (kept on the host without a read-back)
  }
}

TEST(DenseAdam, ClipGradNormMatchesLibTorch) {
  for (const double max_norm : {0.5, 1e6}) {  // clipped, and left alone
    auto a = adam_test_parameters(), b = adam_test_parameters();
    set_gradients(a, 0), set_gradients(b, 0);
    b[1].mutable_grad() = torch::Tensor(), a[1].mutable_grad() = torch::Tensor();
    const double expected = torch::nn::utils::clip_grad_norm_(a, max_norm);
    const auto norm = clip_grad_norm(b, max_norm);
    EXPECT_NEAR(norm.item<double>(), expected, 1e-4 * expected);
    for (size_t i : {0, 2}) EXPECT_TRUE(torch::allclose(a[i].grad(), b[i].grad(), 1e-5, 1e-7)) << max_norm;
  }
  std::vector<torch::Tensor> none = {torch::zeros({2}, torch::requires_grad())};
  EXPECT_FALSE(clip_grad_norm(none, 1.0).defined());
  EXPECT_THROW(clip_grad_norm(none, 0.0), c10::Error);
}

// A training step queues its work without ever waiting for the GPU: CUDA's sync debug mode turns any
// host-device synchronisation into an error. Both forms: dense (batch upload, forward, fused
// full-softmax cross-entropy, backward, clipping, fused Adam) and sparse (sampled softmax, lookups
// through the sparse-gradient path, the fused sort-segment row-wise Adam with its counts kept on the
// device).
TEST(GpuTraining, StepsNeverWaitForTheDevice) {
#ifndef FRESHREC_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine: the GPU step is compiled, not run";
  const torch::Device device(torch::kCUDA, 0);
  for (const bool sparse : {false, true}) {
    SCOPED_TRACE(sparse ? "sparse embeddings, sampled softmax" : "dense, full softmax");
    torch::manual_seed(5);
    SASRec model(small_options(500));
    model->to(device);
    model->train();
    const auto params = model->dense_parameters(/*with_item_table=*/!sparse);
    FusedAdam adam(params, torch::optim::AdamOptions(1e-3));
    SparseRowAdam rows{nullptr};
    if (sparse) {
      rows = SparseRowAdam(model->item_embedding(), ops::RowwiseAdamOptions{}, /*padding_idx=*/0);
      model->set_sparse_gradients(&rows->gradients());
    }
    const NegativeSampler sampler(std::vector<int64_t>(501, 1), /*uniform=*/true);
    const auto log_q = sampler.log_q().to(device);
    const int64_t batch = 8, length = small_options().maxlen;
    std::vector<int64_t> items(batch * length), targets(batch * length);
    for (size_t i = 0; i < items.size(); ++i) {
      items[i] = i % length < 3 ? 0 : 1 + static_cast<int64_t>((i * 7919) % 500);  // left padding
      targets[i] = items[i] == 0 ? 0 : 1 + static_cast<int64_t>((i * 104729) % 500);
    }
    auto step = [&] {
      auto inputs = long_tensor(items, {batch, length}, device);
      const std::vector<int64_t> target_positions = nonzero_positions(targets);
      auto positions = long_tensor(target_positions, {static_cast<int64_t>(target_positions.size())}, device);
      auto target = long_tensor(targets, {batch * length}, device).index_select(0, positions);
      auto hidden = model->forward(inputs).reshape({batch * length, -1}).index_select(0, positions);
      torch::Tensor loss;
      if (sparse) {
        const auto drawn = sampler.sample(64, device);
        loss = sampled_softmax_cross_entropy(hidden, model->lookup_items(target), model->lookup_items(drawn), target,
                                             drawn, log_q);
      } else {
        loss = full_softmax_cross_entropy(hidden, model->item_embedding(), target, 64);
      }
      adam.zero_grad();
      loss.backward();
      clip_grad_norm(params, 1.0);
      adam.step();
      if (sparse) rows->step(1e-3);
      return loss.detach();
    };
    const auto first = step();  // allocations and optimizer state
    torch::cuda::synchronize();
    auto& debug = c10::cuda::warning_state();
    debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR);
    torch::Tensor later;
    EXPECT_NO_THROW({
      for (int i = 0; i < 3; ++i) later = step();
    });
    debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
    ASSERT_TRUE(later.defined());
    EXPECT_LT(later.item<double>(), first.item<double>());  // and it learns
    if (sparse) EXPECT_EQ(rows->steps_taken(), 4);
  }
#endif
}

TEST(Evaluator, RanksFilterSeenAndCountTiesAgainstTheTarget) {
  UserSequences s;
  s.num_items = 5;
  s.items = {{1, 2, 3, 4}};
  const SequenceBatch batch = make_eval_batch(s, {0}, Split::Test, 4);  // target 4, seen {1,2,3}
  auto scores = torch::tensor({{9.f, 5.f, 8.f, 7.f, 6.f, 6.f}});       // column 0 is padding
  EXPECT_EQ(target_ranks(scores, batch, s, Split::Test, true).item<int64_t>(), 1);   // only item 5 ties
  EXPECT_EQ(target_ranks(scores, batch, s, Split::Test, false).item<int64_t>(), 3);  // 2, 3 above, 5 ties
  auto constant = torch::ones({1, 6});
  EXPECT_EQ(target_ranks(constant, batch, s, Split::Test, false).item<int64_t>(), 4);  // last, not first
}

TEST(Checkpoint, RoundTripGivesIdenticalScores) {
  const auto dir = temp_folder("roundtrip");
  torch::manual_seed(3);
  SASRec model(small_options());
  torch::optim::Adam optimizer(model->parameters(), torch::optim::AdamOptions(1e-2));
  auto items = torch::tensor({{0, 1, 2, 3}, {5, 6, 7, 8}}, torch::kLong);
  auto loss = model->score_all(model->last_hidden(items)).logsumexp(1).mean();
  loss.backward();
  optimizer.step();  // non-trivial optimizer state
  model->eval();
  auto before = model->score_all(model->last_hidden(items));

  CheckpointInfo info;
  info.config_yaml = Config().to_yaml();
  info.items.intern("a");
  info.users.intern("u");
  info.meta = {{"epoch", 4}};
  const auto path = dir + "/model.pt";
  // The checkpoint must describe this model: the config carries the small options.
  Config config;
  config.apply_override("model.hidden=16");
  config.apply_override("model.heads=2");
  config.apply_override("model.maxlen=12");
  config.apply_override("model.dropout=0.1");
  info.config_yaml = config.to_yaml();
  save_checkpoint(path, model, &optimizer, info);
  for (const auto& entry : fs::directory_iterator(dir))  // no temporary left behind
    EXPECT_EQ(entry.path().filename(), "model.pt");

  SASRec loaded = load_checkpoint_model(path, torch::kCPU);
  loaded->eval();
  EXPECT_TRUE(torch::equal(before, loaded->score_all(loaded->last_hidden(items))));
  const auto back = read_checkpoint_info(path);
  EXPECT_EQ(back.meta.at("epoch"), 4);
  EXPECT_EQ(back.items.external(1), "a");
  EXPECT_EQ(back.config().get_int("model.hidden"), 16);

  torch::optim::Adam restored(loaded->parameters(), torch::optim::AdamOptions(1e-2));
  load_checkpoint_optimizer(path, restored);
  const auto& state = restored.state();
  EXPECT_EQ(state.size(), optimizer.state().size());

  EXPECT_THROW(read_checkpoint_info(dir + "/missing.pt"), std::runtime_error);
  remove_tree(dir);
}

TEST(Training, BeatsPopularityAndResumesExactly) {
  const auto dir = temp_folder("train");
  Config config = small_training_config(dir + "/full");
  config.apply_override("train.epochs=6");
  const EventLog log = load_event_log(config, nullptr);
  const TrainSummary full = train_model(config, log);
  EXPECT_EQ(full.epochs_run, 6);
  EXPECT_GT(full.test.ndcg(10), full.popularity_test.ndcg(10) * 1.2)
      << "SASRec NDCG@10 " << full.test.ndcg(10) << " vs popularity " << full.popularity_test.ndcg(10);
  EXPECT_TRUE(fs::exists(dir + "/full/best.pt"));
  EXPECT_TRUE(fs::exists(dir + "/full/test.json"));

  // Stop after 3 epochs, resume to 6: the same weights as the uninterrupted run, bit for bit.
  Config first = small_training_config(dir + "/resumed");
  first.apply_override("train.epochs=3");
  train_model(first, log);
  Config second = small_training_config(dir + "/resumed");
  second.apply_override("train.epochs=6");
  const TrainSummary resumed = train_model(second, log, dir + "/resumed/last.pt");
  EXPECT_EQ(resumed.epochs_run, 6);
  expect_same_weights(dir + "/full/last.pt", dir + "/resumed/last.pt");
  EXPECT_DOUBLE_EQ(resumed.test.ndcg(10), full.test.ndcg(10));
  remove_tree(dir);
}

TEST(Training, PlateauGoesBackToTheBestWithASmallerRate) {
  const auto dir = temp_folder("plateau");
  Config plain = small_training_config(dir + "/plain");
  plain.apply_override("train.epochs=12");
  plain.apply_override("train.patience=1");
  plain.apply_override("train.lr=0.02");  // a rate this high soon stops improving
  const EventLog log = load_event_log(plain, nullptr);
  const TrainSummary stopped = train_model(plain, log);
  ASSERT_TRUE(stopped.early_stopped);  // patience 1: the first epoch without progress ends it

  Config decaying = plain;
  decaying.apply_override("train.output_dir=" + dir + "/decaying");
  decaying.apply_override("train.lr_decay=0.5");
  decaying.apply_override("train.lr_decays=2");
  const TrainSummary longer = train_model(decaying, log);
  EXPECT_GT(longer.epochs_run, stopped.epochs_run);  // went on after the first plateau
  const auto meta = read_checkpoint_info(dir + "/decaying/last.pt").meta;
  const int64_t done = meta.at("lr_decays_done").get<int64_t>();
  EXPECT_GE(done, 1);
  EXPECT_LE(done, 2);
  EXPECT_DOUBLE_EQ(meta.at("lr_scale").get<double>(), std::pow(0.5, static_cast<double>(done)));
  EXPECT_GE(longer.best_validation.ndcg(10), stopped.best_validation.ndcg(10));

  EXPECT_THROW(decaying.apply_override("train.lr_decay=0"), ConfigError);  // outside the key's range
  remove_tree(dir);
}

namespace {

// Six epochs of the small config with `overrides`: the model must beat popularity by 20%.
void expect_learns_with(const std::string& name, const std::vector<std::string>& overrides) {
  const auto dir = temp_folder(name);
  Config config = small_training_config(dir);
  config.apply_override("train.epochs=6");
  for (const auto& o : overrides) config.apply_override(o);
  const TrainSummary s = train_model(config, load_event_log(config, nullptr));
  EXPECT_GT(s.test.ndcg(10), s.popularity_test.ndcg(10) * 1.2)
      << name << ": SASRec NDCG@10 " << s.test.ndcg(10) << " vs popularity " << s.popularity_test.ndcg(10);
  remove_tree(dir);
}

}  // namespace

// A student distilled with the literature's options together (soft targets over the teacher's top-K,
// ranking distillation, its item table projected from the teacher's) learns; each option alone
// changes the student that plain distillation trains (the runs are otherwise the same, bit for bit
// on the CPU); a student wider than the teacher cannot take the projection and is refused by key.
TEST(Training, DistillationOptionsTrainAStudent) {
  const auto dir = temp_folder("distill-options");
  Config teacher_config = small_training_config(dir + "/teacher");
  teacher_config.apply_override("train.epochs=4");
  const EventLog log = load_event_log(teacher_config, nullptr);
  const std::string teacher = train_model(teacher_config, log).best_checkpoint;
  auto student_with = [&](const std::string& name, const std::vector<std::string>& options, int64_t epochs) {
    Config c = small_training_config(dir + "/" + name);
    for (const std::string o : {"model.hidden=16", "model.heads=1", "distill.top_k=20"}) c.apply_override(o);
    c.apply_override("train.epochs=" + std::to_string(epochs));
    for (const auto& o : options) c.apply_override(o);
    return c;
  };
  const std::vector<std::string> all = {"distill.soft_targets=top_k", "distill.ranking_k=5", "distill.ranking_weight=0.5",
                                        "distill.init_items=teacher"};
  Config student = student_with("student", all, 6);
  const TrainSummary s = train_model(student, log, "", teacher);
  EXPECT_GT(s.test.ndcg(10), s.popularity_test.ndcg(10) * 1.2)
      << "student NDCG@10 " << s.test.ndcg(10) << " vs popularity " << s.popularity_test.ndcg(10);
  auto table_after_one_epoch = [&](const std::string& name, const std::vector<std::string>& options) {
    return load_checkpoint_model(train_model(student_with(name, options, 1), log, "", teacher).last_checkpoint, torch::kCPU)
        ->item_embedding();
  };
  const auto plain = table_after_one_epoch("plain", {});
  EXPECT_TRUE(torch::equal(plain, table_after_one_epoch("plain-again", {})));  // the comparison below can tell
  EXPECT_FALSE(torch::equal(plain, table_after_one_epoch("top-k", {"distill.soft_targets=top_k"})));
  EXPECT_FALSE(torch::equal(plain, table_after_one_epoch("ranking", {"distill.ranking_k=5", "distill.ranking_weight=0.5"})));
  EXPECT_FALSE(torch::equal(plain, table_after_one_epoch("init", {"distill.init_items=teacher"})));
  Config wide = student;
  wide.apply_override("model.hidden=64");  // the teacher's is 32
  wide.apply_override("train.output_dir=" + dir + "/wide");
  const std::string error = testing_support::error_of([&] { train_model(wide, log, "", teacher); });
  EXPECT_NE(error.find("distill.init_items=teacher"), std::string::npos) << error;
  remove_tree(dir);
}

TEST(Training, SampledSoftmaxAlsoLearns) { expect_learns_with("sampled", {"train.loss=sampled", "train.negatives=64"}); }

// train.precision=bf16: the forward and the loss under bfloat16 autocast, the weights and optimizer
// state fp32; dense and sparse tables both learn, and autocast is off again afterwards.
TEST(Training, Bf16AutocastLearnsWithFp32Weights) {
  expect_learns_with("bf16", {"train.precision=bf16"});
  expect_learns_with("bf16-sparse", {"train.precision=bf16", "train.loss=sampled", "train.negatives=64",
                                     "train.sparse_embeddings=true"});
  const auto dir = temp_folder("bf16-weights");
  Config config = small_training_config(dir);
  config.apply_override("train.epochs=1");
  config.apply_override("train.precision=bf16");
  const TrainSummary s = train_model(config, load_event_log(config, nullptr));
  EXPECT_FALSE(at::autocast::is_autocast_enabled(torch::kCPU));
  SASRec trained = load_checkpoint_model(s.best_checkpoint, torch::kCPU);
  for (const auto& p : trained->named_parameters()) EXPECT_EQ(p.value().scalar_type(), torch::kFloat) << p.key();
  // The same run in fp32 ends elsewhere: the bf16 matmuls did run.
  Config fp32 = config;
  fp32.apply_override("train.precision=fp32");
  fp32.apply_override("train.output_dir=" + dir + "/fp32");
  SASRec reference = load_checkpoint_model(train_model(fp32, load_event_log(fp32, nullptr)).best_checkpoint, torch::kCPU);
  EXPECT_FALSE(torch::equal(trained->item_embedding(), reference->item_embedding()));
  EXPECT_TRUE(torch::allclose(trained->item_embedding(), reference->item_embedding(), 0.05, 0.05));
  EXPECT_THROW(config.apply_override("train.precision=fp16"), ConfigError);  // named with its choices
  remove_tree(dir);
}

TEST(Training, ExcludingSeenItemsFromTheLossAlsoLearns) {
  expect_learns_with("exclude-seen", {"train.exclude_seen=true"});
  const auto dir = temp_folder("exclude-sampled");
  Config config = small_training_config(dir);
  config.apply_override("train.exclude_seen=true");
  config.apply_override("train.loss=sampled");  // the option shapes the full softmax only
  EXPECT_THROW(train_model(config, load_event_log(config, nullptr)), ConfigError);
  remove_tree(dir);
}

TEST(Training, SparseEmbeddingsMatchTheDensePath) {
  // Same data, loss and negatives: the item table updated by the fused row-wise Adam kernel must
  // learn as well as LibTorch's dense Adam (within noise), and resume exactly from its checkpoint;
  // with the full softmax too.
  const auto dir = temp_folder("sparse");
  Config dense = small_training_config(dir + "/dense");
  dense.apply_override("train.epochs=6");
  dense.apply_override("train.loss=sampled");
  dense.apply_override("train.negatives=64");
  Config sparse = dense;
  sparse.apply_override("train.sparse_embeddings=true");
  sparse.apply_override("train.output_dir=" + dir + "/sparse");
  const EventLog log = load_event_log(dense, nullptr);
  const TrainSummary d = train_model(dense, log), s = train_model(sparse, log);
  EXPECT_GT(s.best_validation.ndcg(10), d.best_validation.ndcg(10) * 0.9)
      << "sparse " << s.best_validation.ndcg(10) << " vs dense " << d.best_validation.ndcg(10);
  EXPECT_GT(s.test.ndcg(10), s.popularity_test.ndcg(10) * 1.2);

  Config first = sparse;
  first.apply_override("train.output_dir=" + dir + "/resumed");
  first.apply_override("train.epochs=3");
  train_model(first, log);
  first.apply_override("train.epochs=6");
  train_model(first, log, dir + "/resumed/last.pt");
  expect_same_weights(dir + "/sparse/last.pt", dir + "/resumed/last.pt");

  // With the full softmax every row takes a gradient at every step: the row-wise table learns as the
  // dense one does then too.
  Config full_dense = dense;
  full_dense.apply_override("train.loss=full");
  full_dense.apply_override("train.output_dir=" + dir + "/full-dense");
  Config full_sparse = full_dense;
  full_sparse.apply_override("train.sparse_embeddings=true");
  full_sparse.apply_override("train.output_dir=" + dir + "/full-sparse");
  const TrainSummary fd = train_model(full_dense, log), fs = train_model(full_sparse, log);
  EXPECT_GT(fs.best_validation.ndcg(10), fd.best_validation.ndcg(10) * 0.9)
      << "full softmax, sparse " << fs.best_validation.ndcg(10) << " vs dense " << fd.best_validation.ndcg(10);
  EXPECT_GT(fs.test.ndcg(10), fs.popularity_test.ndcg(10) * 1.2);
  remove_tree(dir);
}

// ---- streaming -------------------------------------------------------------------------------------

#include "engine/stream/seen_items.h"
#include "engine/stream/sources.h"
#include "engine/stream/stream_learner.h"

#include <random>
#include <set>

namespace {

// Calls `action` when a given record passes.
class HookedSource : public EventSource {
 public:
  HookedSource(EventSource& inner, uint64_t at, std::function<void()> action)
      : inner_(inner), at_(at), action_(std::move(action)) {}
  std::optional<StreamRecord> next(int wait_ms) override {
    auto r = inner_.next(wait_ms);
    if (r && r->position == at_) action_();
    return r;
  }
  bool finished() const override { return inner_.finished(); }
  std::string position() const override { return inner_.position(); }
  void seek(const std::string& p) override { inner_.seek(p); }

 private:
  EventSource& inner_;
  uint64_t at_;
  std::function<void()> action_;
};


}  // namespace

// SeenItems against a plain list per user: random users and items with repeats, segments that move
// as they grow, several events of one user in a batch; each row is the user's distinct earlier items
// without the target.
TEST(Stream, SeenItemsGatherEachUsersDistinctEarlierItems) {
  std::vector<torch::Device> devices{torch::kCPU};
  if (torch::cuda::is_available()) devices.emplace_back(torch::kCUDA);  // the GPU path, where there is one
  for (const auto& device : devices) {
  SeenItems seen(device);
  std::mt19937 rng(3);
  std::vector<std::vector<int32_t>> naive(40);
  for (int round = 0; round < 30; ++round) {
    std::vector<int32_t> slots, targets;
    std::vector<int64_t> sizes;
    std::vector<std::set<int32_t>> expected;
    for (int e = 0; e < 64; ++e) {
      const auto slot = static_cast<int32_t>(rng() % (round < 10 ? 5 : 40));  // a few users grow long
      const auto item = static_cast<int32_t>(1 + rng() % 300);
      const int64_t size = seen.add(slot, item);
      EXPECT_EQ(size, static_cast<int64_t>(naive[slot].size()));  // distinct items before this event
      std::set<int32_t> want(naive[slot].begin(), naive[slot].end());
      want.erase(item);  // a repeat: the target itself is never excluded
      expected.push_back(want);
      if (std::find(naive[slot].begin(), naive[slot].end(), item) == naive[slot].end()) naive[slot].push_back(item);
      slots.push_back(slot), targets.push_back(item), sizes.push_back(size);
    }
    const auto rows =
        seen.excluded(slots, sizes, torch::tensor(std::vector<int64_t>(targets.begin(), targets.end())).to(device));
    ASSERT_EQ(rows.size(0), 64);
    EXPECT_EQ(rows.device(), device);
    const auto cells = rows.cpu().contiguous();
    for (int64_t r = 0; r < 64; ++r) {
      std::set<int32_t> got;
      for (int64_t c = 0; c < cells.size(1); ++c)
        if (const int64_t v = cells[r][c].item<int64_t>(); v != 0) got.insert(static_cast<int32_t>(v));
      EXPECT_EQ(got, expected[r]) << device << " round " << round << " row " << r;
    }
  }
  EXPECT_GT(seen.pool_size(), 8 * 40);  // segments moved as they grew
  }
}

namespace {

Config stream_config(const std::string& out) {
  Config c = small_training_config(out + "/teacher");
  c.apply_override("generator.drift=0.02");
  c.apply_override("train.epochs=3");
  c.apply_override("train.loss=sampled");
  c.apply_override("train.negatives=64");
  c.apply_override("stream.batch_size=64");
  c.apply_override("stream.window=1000");
  c.apply_override("stream.grow_chunk=16");
  c.apply_override("stream.lr=0.003");  // the generated tastes drift fast
  c.apply_override("stream.output_dir=" + out);
  // Batches close when full, never by the clock: a stalled machine must not move a batch boundary in
  // the runs that are compared bit for bit (the Kafka tests set their own).
  c.apply_override("stream.max_wait_ms=3600000");
  return c;
}

// A replayed log split at a time quantile, and a teacher trained on the part before the cut.
struct StreamSetup {
  ReplaySource source;
  uint64_t cut;
  std::vector<RawEvent> warm;
  std::string teacher;
};

StreamSetup prepare_stream(const Config& config, ReplaySource source, double fraction) {
  const uint64_t cut = source.quantile_position(fraction);
  auto warm = source.events_before(cut);
  const std::string teacher = train_model(config, event_log_from(warm)).best_checkpoint;
  return {std::move(source), cut, std::move(warm), teacher};
}

// The same over the config's generated log.
StreamSetup prepare_stream(const Config& config, double fraction = 0.7) {
  return prepare_stream(config, ReplaySource::from_log(load_event_log(config, nullptr), "generator"), fraction);
}

// Runs `run` over the stream from `cut`, crashing when the record at `crash_at` passes, then resumes
// it from the checkpoint it left; returns the resumed run's summary.
StreamSummary crash_and_resume(const Config& config, ReplaySource& source, uint64_t cut,
                               const std::vector<RawEvent>& warm, StreamRun run, uint64_t crash_at) {
  source.skip_to(cut);
  HookedSource crash(source, crash_at, [] { throw std::runtime_error("simulated crash"); });
  EXPECT_THROW(run_stream(config, crash, warm, run), std::runtime_error);
  run.resume = run.output_dir + "/stream.pt";
  return run_stream(config, source, warm, run);
}

}  // namespace

TEST(Stream, GrowsVocabularyAndResumesExactlyAfterACrash) {
  const auto dir = temp_folder("stream");
  const Config config = stream_config(dir);
  auto [source, cut, warm, teacher] =
      prepare_stream(config);
  const int64_t teacher_items = read_checkpoint_info(teacher).items.size();

  Config checkpointing = config;
  checkpointing.apply_override("stream.checkpoint_every=640");
  checkpointing.apply_override("stream.replay_share=0.5");  // the reservoir must survive the crash too
  checkpointing.apply_override("stream.replay_capacity=500");
  checkpointing.apply_override("stream.train_positions=all");  // (the SIGKILL test covers "newest")
  StreamRun whole{teacher, "", true, dir + "/whole", "whole"};
  source.skip_to(cut);
  const StreamSummary full = run_stream(checkpointing, source, warm, whole);
  EXPECT_EQ(full.events, source.records().size() - cut);
  EXPECT_EQ(full.scored, full.events);
  EXPECT_GT(full.new_items, 0u);  // the generator introduces items over time
  EXPECT_GT(full.cold_items, 0u);
  SASRec after = load_checkpoint_model(full.checkpoint, torch::kCPU);
  EXPECT_GT(after->options().num_items, teacher_items);
  EXPECT_EQ(after->options().num_items % 16, 0);  // grown in whole chunks

  // Crash in the middle of the stream, then resume from the last checkpoint.
  StreamRun crashing{teacher, "", true, dir + "/crashed", "crashed"};
  const StreamSummary rest = crash_and_resume(checkpointing, source, cut, warm, crashing, cut + 2000 + 37);
  EXPECT_EQ(rest.events, full.events);  // every event exactly once
  EXPECT_GT(full.replayed, 0u);
  EXPECT_EQ(rest.replayed, full.replayed);
  expect_same_weights(full.checkpoint, rest.checkpoint);
  // The metrics cover the whole stream after a resume too: the summary, and every metrics line (the
  // window cut by the crash included), but for wall-clock seconds.
  EXPECT_EQ(rest.overall.count(), full.overall.count());
  EXPECT_EQ(rest.overall.ndcg(10), full.overall.ndcg(10));
  EXPECT_EQ(rest.overall.hit_rate(10), full.overall.hit_rate(10));
  EXPECT_EQ(rest.overall.mrr(), full.overall.mrr());
  auto metrics_lines = [](const std::string& path) {
    std::vector<nlohmann::json> lines;
    std::ifstream in(path);
    for (std::string line; std::getline(in, line);) {
      auto j = nlohmann::json::parse(line);
      j.erase("seconds");
      j.erase("label");
      lines.push_back(j);
    }
    return lines;
  };
  const auto whole_lines = metrics_lines(dir + "/whole/metrics.jsonl");
  const auto resumed_lines = metrics_lines(dir + "/crashed/metrics.jsonl");
  ASSERT_EQ(resumed_lines.size(), whole_lines.size());
  for (size_t i = 0; i < whole_lines.size(); ++i) EXPECT_EQ(resumed_lines[i], whole_lines[i]) << "metrics line " << i;
  // A fresh start in a used folder begins its files anew: no line of the earlier run stays.
  source.skip_to(cut);
  run_stream(checkpointing, source, warm, whole);
  EXPECT_EQ(metrics_lines(dir + "/whole/metrics.jsonl"), whole_lines);
  remove_tree(dir);
}

// stream.update=adapters: a plain teacher gets zero-initialised adapters, the updates change them and
// the item table alone (every other weight bit for bit the teacher's), and a crash resumes into the
// same model (the checkpoint's config records the adapters).
TEST(Stream, AdapterUpdatesChangeTheAdaptersAndItemRowsAlone) {
  const auto dir = temp_folder("stream-adapters");
  Config config = stream_config(dir);
  auto [source, cut, warm, teacher] =
      prepare_stream(config);
  Config adapters = config;
  adapters.apply_override("stream.update=adapters");
  adapters.apply_override("finetune.lora_rank=2");
  adapters.apply_override("stream.checkpoint_every=640");
  source.skip_to(cut);
  const StreamSummary whole = run_stream(adapters, source, warm, {teacher, "", true, dir + "/whole", "whole"});
  SASRec before = load_checkpoint_model(teacher, torch::kCPU);
  SASRec after = load_checkpoint_model(whole.checkpoint, torch::kCPU);
  EXPECT_EQ(after->options().lora_rank, 2);
  const auto updated = after->named_parameters();
  int adapters_seen = 0;
  for (const auto& p : before->named_parameters()) {
    if (p.key() == "item_embedding") continue;
    EXPECT_TRUE(torch::equal(p.value(), updated[p.key()])) << p.key() << " changed";
  }
  for (const auto& p : updated)
    if (p.key().find("_lora.b") != std::string::npos) {
      ++adapters_seen;
      EXPECT_GT(p.value().abs().max().item<double>(), 0) << p.key() << " never learned";
    }
  EXPECT_EQ(adapters_seen, 8);
  const auto rows = before->item_embedding().size(0);
  EXPECT_FALSE(torch::equal(before->item_embedding(), after->item_embedding().narrow(0, 0, rows)));

  const StreamSummary resumed =
      crash_and_resume(adapters, source, cut, warm, {teacher, "", true, dir + "/crashed", "crashed"}, cut + 1500 + 11);
  EXPECT_EQ(resumed.events, whole.events);
  expect_same_weights(whole.checkpoint, resumed.checkpoint);
  // A resume under the other update mode is refused by name (its optimizer state is the other's).
  Config all_update = adapters;
  all_update.apply_override("stream.update=all");
  try {
    run_stream(all_update, source, warm, {teacher, dir + "/crashed/stream.pt", true, dir + "/crashed", "crashed"});
    ADD_FAILURE() << "a resume under another stream.update was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("was written with stream.update=adapters, this run asks for all"), std::string::npos)
        << e.what();
  }
  remove_tree(dir);
}

// A teacher with an item adapter (a fine-tune's finetune.item_lora_rank): the stream folds it into the
// table it grows and updates row by row, starts from the same answers, and its checkpoints say the
// model has none, so a crash resumes into the same model.
TEST(Stream, ATeachersItemAdapterIsFoldedIntoTheTable) {
  const auto dir = temp_folder("stream-item-adapter");
  Config config = stream_config(dir);
  config.apply_override("finetune.item_lora_rank=2");
  config.apply_override("stream.checkpoint_every=640");
  auto [source, cut, warm, teacher] = prepare_stream(config);
  SASRec adapted = load_checkpoint_model(teacher, torch::kCPU);
  ASSERT_EQ(adapted->options().item_lora_rank, 2);
  ASSERT_GT(adapted->item_adapter()[0].abs().max().item<double>(), 0);  // the teacher's training moved it
  source.skip_to(cut);
  const StreamSummary whole = run_stream(config, source, warm, {teacher, "", true, dir + "/whole", "whole"});
  SASRec after = load_checkpoint_model(whole.checkpoint, torch::kCPU);
  EXPECT_EQ(after->options().item_lora_rank, 0);
  EXPECT_TRUE(after->item_adapter().empty());
  const StreamSummary resumed =
      crash_and_resume(config, source, cut, warm, {teacher, "", true, dir + "/crashed", "crashed"}, cut + 1500 + 11);
  EXPECT_EQ(resumed.events, whole.events);
  expect_same_weights(whole.checkpoint, resumed.checkpoint);
  // Folding keeps the adapted teacher's answers.
  SASRec folded = fold_item_adapter(adapted);
  const auto histories = torch::randint(1, adapted->options().num_items + 1, {4, adapted->options().maxlen}, torch::kLong);
  adapted->eval(), folded->eval();
  torch::NoGradGuard no_grad;
  EXPECT_LT((adapted->score_all(adapted->last_hidden(histories)) - folded->score_all(folded->last_hidden(histories)))
                .abs().max().item<double>(), 1e-5);
  remove_tree(dir);
}

// `stream --compare-frozen` with a student: the frozen teacher, the continual teacher with its
// online-distilled student, and the same student updated on the labels alone, in one command's
// output; the labels-only pass publishes nothing.
TEST(Stream, CompareFrozenAlsoRunsTheStudentOnLabelsAlone) {
  const auto dir = temp_folder("compare-labels");
  const auto [rc, out] = testing_support::run_command(
      std::string(FRESHREC_BINARY) + " --log-level warn stream --compare-frozen model.hidden=16 model.maxlen=12 train.epochs=2"
      " train.threads=2 train.device=cpu train.log_every_seconds=1000 generator.users=300 generator.items=80"
      " generator.events_per_user=15 student.hidden=8 stream.batch_size=64 stream.publish_every=500 stream.output_dir=" + dir);
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("(the student of 'continual', distilled online"), std::string::npos) << out;
  EXPECT_NE(out.find("(the same student updated on the labels alone, no teacher term)"), std::string::npos) << out;
  EXPECT_NE(out.find("frozen "), std::string::npos) << out;
  EXPECT_TRUE(fs::exists(dir + "/student-labels/metrics.jsonl"));
  EXPECT_FALSE(fs::exists(dir + "/student-labels/published"));
  EXPECT_TRUE(fs::exists(dir + "/continual/published"));
  remove_tree(dir);
}

TEST(Stream, FullSoftmaxUpdatesLeaveTheReservedRowsAlone) {
  const auto dir = temp_folder("stream-full");
  Config config = stream_config(dir);
  config.apply_override("train.loss=full");
  config.apply_override("stream.loss=full");
  config.apply_override("stream.grow_chunk=64");  // rows reserved ahead of the items that will use them
  auto [source, cut, warm, teacher] =
      prepare_stream(config);
  source.skip_to(cut);
  const StreamSummary summary = run_stream(config, source, warm, StreamRun{teacher, "", true, dir + "/run", "run"});
  const auto info = read_checkpoint_info(summary.checkpoint);
  const int64_t known = static_cast<int64_t>(info.items.size());
  Learner learner(load_checkpoint_model(summary.checkpoint, torch::kCPU), LearnerSettings::streaming(config));
  load_checkpoint_optimizer(summary.checkpoint, *learner.dense, learner.sparse.get());
  const int64_t rows = learner.model->options().num_items + 1;
  ASSERT_GT(rows, known + 1) << "the test needs reserved rows";
  for (const auto& buffer : learner.sparse->named_buffers()) {
    if (buffer.key() != "exp_avg" && buffer.key() != "exp_avg_sq") continue;
    const auto reserved = buffer.value().narrow(0, known + 1, rows - known - 1);
    EXPECT_EQ(reserved.abs().max().item<float>(), 0.0f) << buffer.key() << ": a reserved row was updated";
    EXPECT_GT(buffer.value().narrow(0, 1, known).abs().max().item<float>(), 0.0f) << buffer.key();
  }
  remove_tree(dir);
}

TEST(Stream, StudentLearnsOnlinePublishesAndResumesExactly) {
  const auto dir = temp_folder("stream-student");
  const Config config = stream_config(dir);
  auto [source, cut, warm, teacher] =
      prepare_stream(config);
  Config student_config = config;
  student_config.apply_override("model.hidden=8");
  student_config.apply_override("model.blocks=1");
  student_config.apply_override("model.heads=1");
  student_config.apply_override("train.epochs=2");
  student_config.apply_override("train.output_dir=" + dir + "/student");
  const std::string student = train_model(student_config, event_log_from(warm), "", teacher).best_checkpoint;

  Config streaming = config;
  streaming.apply_override("stream.checkpoint_every=640");
  streaming.apply_override("stream.publish_every=500");
  streaming.apply_override("stream.publish_keep=2");
  StreamRun whole{teacher, "", true, dir + "/whole", "whole", student};
  source.skip_to(cut);
  const StreamSummary full = run_stream(streaming, source, warm, whole);
  EXPECT_EQ(full.student_overall.count(), full.scored);  // the student is scored on every event too
  EXPECT_GT(full.student_overall.ndcg(10), 0.0);
  EXPECT_GE(full.publications, full.events / 500);
  const auto manifest = Manifest::read(dir + "/whole/published");
  ASSERT_TRUE(manifest.has_value());
  EXPECT_EQ(manifest->version, static_cast<int64_t>(full.publications));
  EXPECT_EQ(manifest->json.at("events").get<uint64_t>(), full.events);  // the last one has seen everything
  EXPECT_EQ(manifest->json.at("model"), "student");
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(dir + "/whole/published")) files += entry.path().extension() == ".pt";
  EXPECT_EQ(files, 2u);  // publish_keep
  ExportedModel published(dir + "/whole/published/" + manifest->file);
  EXPECT_EQ(published.meta().at("version"), manifest->version);
  EXPECT_GT(published.num_items(), 0);
  EXPECT_GT(full.publish_delay_p99_ms, 0.0);

  // A crash and a resume give the same teacher and the same student, bit for bit.
  StreamRun crashing{teacher, "", true, dir + "/crashed", "crashed", student};
  const StreamSummary rest = crash_and_resume(streaming, source, cut, warm, crashing, cut + 1500 + 11);
  EXPECT_EQ(rest.events, full.events);
  expect_same_weights(full.checkpoint, rest.checkpoint);
  auto student_of = [](const std::string& path) {
    const auto info = read_checkpoint_info(path);
    EXPECT_TRUE(has_student(info));
    SASRec m = student_model(info);
    unpack_student(info, m);
    return m;
  };
  auto a = student_of(full.checkpoint), b = student_of(rest.checkpoint);
  for (const auto& p : a->named_parameters())
    EXPECT_TRUE(torch::equal(p.value(), b->named_parameters()[p.key()])) << p.key();
  // Versions keep counting up across the crash.
  EXPECT_GT(Manifest::read(dir + "/crashed/published")->version, 0);
  remove_tree(dir);
}

TEST(Stream, BadEventsGoToDeadLettersAndContinualBeatsFrozen) {
  const auto dir = temp_folder("stream-bad");
  Config config = stream_config(dir);
  config.apply_override("generator.drift=0.05");
  config.apply_override("generator.new_item_fraction=0.4");
  const auto [replay, cut, warm, teacher] =
      prepare_stream(config, 0.6);

  // The stream as JSON lines, with bad events mixed in.
  std::string lines;
  size_t bad = 0;
  for (uint64_t p = cut; p < replay.records().size(); ++p) {
    const auto& e = *replay.records()[p].event;
    lines += nlohmann::json{{"user", e.user}, {"item", e.item}, {"timestamp", *e.timestamp}}.dump() + "\n";
    if (p % 500 == 0) {
      lines += "{\"user\": \"x\", \"item\": 1, \"colour\": 2}\n{\"user\": -3, \"item\": 4}\nnot json\n";
      lines += "{\"user\": \"x\", \"item\": 1, \"timestamp\": 99999999999999}\n";
      bad += 4;
    }
  }
  std::istringstream frozen_in(lines), continual_in(lines);
  LineStreamSource frozen_source(frozen_in, LineFormat::Json), continual_source(continual_in, LineFormat::Json);
  const StreamSummary frozen = run_stream(config, frozen_source, warm, {teacher, "", false, dir + "/frozen", "frozen"});
  const StreamSummary continual =
      run_stream(config, continual_source, warm, {teacher, "", true, dir + "/continual", "continual"});
  EXPECT_EQ(continual.dead_letters, bad);
  EXPECT_EQ(continual.scored + bad, continual.events);
  std::ifstream letters(dir + "/continual/dead_letters.jsonl");
  size_t count = 0;
  bool named_field = false;
  for (std::string line; std::getline(letters, line); ++count)
    named_field |= line.find("unknown field 'colour'") != std::string::npos;
  EXPECT_EQ(count, bad);
  EXPECT_TRUE(named_field);
  EXPECT_GT(continual.overall.ndcg(10), frozen.overall.ndcg(10) * 1.1)
      << "continual " << continual.overall.ndcg(10) << " vs frozen " << frozen.overall.ndcg(10);

  // The same stream, continual, with one setting changed.
  auto continual_with = [&](const std::string& setting, const std::string& label) {
    Config changed = config;
    changed.apply_override(setting);
    std::istringstream in(lines);
    LineStreamSource source(in, LineFormat::Json);
    return run_stream(changed, source, warm, {teacher, "", true, dir + "/" + label, label});
  };
  // The full-softmax update (every row of the table through the row-wise optimizer) learns too.
  const StreamSummary all_rows = continual_with("stream.loss=full", "full");
  EXPECT_GT(all_rows.overall.ndcg(10), frozen.overall.ndcg(10) * 1.1)
      << "full softmax " << all_rows.overall.ndcg(10) << " vs frozen " << frozen.overall.ndcg(10);

  // Updates under bf16 autocast (train.precision=bf16; the ranking still scores in fp32) learn too.
  const StreamSummary half = continual_with("train.precision=bf16", "bf16");
  EXPECT_GT(half.overall.ndcg(10), frozen.overall.ndcg(10) * 1.1)
      << "bf16 " << half.overall.ndcg(10) << " vs frozen " << frozen.overall.ndcg(10);
  EXPECT_NEAR(half.overall.ndcg(10), continual.overall.ndcg(10), 0.1 * continual.overall.ndcg(10));
  remove_tree(dir);
}

TEST(Stream, RankingFiltersEverySeenItemAndBadSettingsAreRefused) {
  const auto dir = temp_folder("stream-seen");
  Config config = stream_config(dir);  // model.maxlen=20; generated users have longer histories
  config.apply_override("train.epochs=1");  // any model: the comparison holds its weights fixed
  auto setup = prepare_stream(config);
  auto frozen_run = [&](const std::string& keep) {
    Config c = config;
    c.apply_override("stream.history_keep=" + keep);
    ReplaySource replay = setup.source;
    replay.skip_to(setup.cut);
    return run_stream(c, replay, setup.warm, {setup.teacher, "", false, dir + "/keep" + keep, "keep" + keep});
  };
  // The same frozen model: filtering more of the user's earlier items can only lift the target.
  const StreamSummary all = frozen_run("0"), window = frozen_run("20");
  ASSERT_EQ(all.scored, window.scored);
  EXPECT_GT(all.overall.mrr(), window.overall.mrr());
  EXPECT_GE(all.overall.hit_rate(10), window.overall.hit_rate(10));
  // Leaving seen items out of the update's loss needs the full softmax (this config's is sampled).
  EXPECT_THROW(
      {
        Config c = config;
        c.apply_override("train.exclude_seen=true");
        ReplaySource replay = setup.source;
        run_stream(c, replay, setup.warm, {setup.teacher, "", true, dir + "/excluding", "excluding"});
      },
      ConfigError);
  // A dropout rate outside [0, 1) (other than -1, the model's own) is refused.
  {
    Config c = config;
    EXPECT_THROW(c.apply_override("stream.dropout=1.5"), ConfigError);  // outside the key's range
    c.apply_override("stream.dropout=-0.5");  // in range, but neither -1 nor a rate
    ReplaySource replay = setup.source;
    EXPECT_THROW(run_stream(c, replay, setup.warm, {setup.teacher, "", true, dir + "/dropout", "dropout"}), ConfigError);
  }
  // Keeping fewer items than the model reads is refused, naming the key.
  try {
    frozen_run("5");
    ADD_FAILURE() << "stream.history_keep=5 below model.maxlen=20 was accepted";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("stream.history_keep (5)"), std::string::npos) << e.what();
  }
  remove_tree(dir);
}

// On a GPU a micro-batch (upload, ranking, the guarded teacher step, the sparse update, the readout
// of ranks and losses) queues its work without waiting for the device: CUDA's sync debug mode turns
// any host-device synchronisation into an error in the middle of the stream. Taking in a finished
// micro-batch waits on its event only, which the mode allows. (Checkpoints, publication and table
// growth may wait; this stretch has none: every item is the teacher's.)
TEST(Stream, MicroBatchesNeverWaitForTheDeviceOnAGpu) {
#ifndef FRESHREC_WITH_CUDA
  GTEST_SKIP() << "built without CUDA";
#else
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA GPU on this machine: the GPU stream is compiled, not run";
  const auto dir = temp_folder("stream-gpu");
  Config config = stream_config(dir);
  config.apply_override("train.device=cuda");
  config.apply_override("stream.checkpoint_every=0");
  config.apply_override("stream.window=200");
  const auto setup = prepare_stream(config);
  const IdMap known = read_checkpoint_info(setup.teacher).items;
  std::string lines;
  for (uint64_t p = setup.cut; p < setup.source.records().size(); ++p) {
    const auto& e = *setup.source.records()[p].event;
    if (known.find(e.item) >= 0) lines += nlohmann::json{{"user", e.user}, {"item", e.item}, {"timestamp", *e.timestamp}}.dump() + "\n";
  }
  const auto count = static_cast<uint64_t>(std::count(lines.begin(), lines.end(), '\n'));
  ASSERT_GT(count, 1000u);
  std::istringstream in(lines);
  LineStreamSource source(in, LineFormat::Json);
  auto& debug = c10::cuda::warning_state();
  HookedSource on(source, 300, [&] { debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_ERROR); });
  HookedSource off(on, count - 100, [&] { debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED); });
  StreamSummary s;
  EXPECT_NO_THROW(s = run_stream(config, off, setup.warm, {setup.teacher, "", true, dir + "/gpu", "gpu"}));
  debug.set_sync_debug_mode(c10::cuda::SyncDebugMode::L_DISABLED);
  EXPECT_EQ(s.scored, count);
  EXPECT_EQ(s.skipped_batches, 0u);
  EXPECT_GT(s.overall.ndcg(10), 0.0);
  remove_tree(dir);
#endif
}

namespace {

SASRec tiny_model() {
  torch::manual_seed(2);
  SASRecOptions o;
  o.num_items = 30, o.hidden = 16, o.blocks = 1, o.heads = 1, o.maxlen = 6, o.dropout = 0;
  return SASRec(o);
}

}  // namespace

TEST(Learner, NonFiniteGradientsUnderAFiniteLossSkipTheStep) {
  for (const double clip : {1.0, 0.0}) {  // with clipping, and without, where no norm is needed but the guard's
    LearnerSettings settings;
    settings.lr = settings.item_lr = 1e-2;
    settings.clip_norm = clip;
    settings.guard = true;
    settings.max_loss = 50;
    settings.row_wise_items = true;
    Learner learner(tiny_model(), settings);
    const auto items = torch::randint(1, 31, {4, 6}, torch::kLong);
    auto snapshot = [&] {
      std::vector<torch::Tensor> state;
      for (const auto& p : learner.model->parameters()) state.push_back(p.detach().clone());
      for (const auto& b : learner.sparse->named_buffers())  // the moments; the step count advances by design
        if (b.key() != "step") state.push_back(b.value().detach().clone());
      return state;
    };
    auto same = [](const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
      for (size_t i = 0; i < a.size(); ++i)
        if (!torch::equal(a[i], b[i])) return false;
      return true;
    };
    // sqrt at 0: a finite loss (0) whose gradient is inf * 0 = NaN everywhere, the item table included.
    const auto before = snapshot();
    const auto out = learner.model->forward(items);
    const auto poisoned = torch::sqrt(out.sum() * 0);
    ASSERT_TRUE(std::isfinite(poisoned.item<double>()));
    EXPECT_EQ(learner.step(poisoned).item<float>(), 1.0f) << "clip " << clip;
    EXPECT_TRUE(same(before, snapshot())) << "a skipped step must change no weight and no moment (clip " << clip << ")";
    const auto big = learner.model->forward(items).pow(2).sum() * 1e6 + 100;  // finite, above max_loss
    EXPECT_EQ(learner.step(big).item<float>(), 1.0f);
    EXPECT_TRUE(same(before, snapshot()));
    const auto good = learner.model->forward(items).pow(2).mean();
    EXPECT_EQ(learner.step(good).item<float>(), 0.0f);
    EXPECT_FALSE(same(before, snapshot()));
  }
}

// Without the guard every step applies (no flag); the item table in the dense optimizer gets its own
// parameter group, first, when its rate differs, and each group's rate is the schedule's of its base.
TEST(Learner, TheTableGroupAndTheScheduleFollowTheSettings) {
  LearnerSettings settings;
  settings.lr = 1e-2, settings.item_lr = 3e-2;
  Learner learner(tiny_model(), settings);
  ASSERT_FALSE(learner.sparse);
  const auto& groups = learner.dense->param_groups();
  ASSERT_EQ(groups.size(), 2u);
  ASSERT_EQ(groups[0].params().size(), 1u);
  EXPECT_TRUE(groups[0].params()[0].is_same(learner.model->item_embedding()));
  EXPECT_EQ(groups[1].params().size(), learner.model->dense_parameters(/*with_item_table=*/false).size());
  const auto table = learner.model->item_embedding().detach().clone();
  const auto items = torch::randint(1, 31, {4, 6}, torch::kLong);
  EXPECT_FALSE(learner.step(learner.model->forward(items).pow(2).mean(), [](double base) { return base / 4; }).defined());
  EXPECT_DOUBLE_EQ(groups[0].options().get_lr(), 3e-2 / 4);
  EXPECT_DOUBLE_EQ(groups[1].options().get_lr(), 1e-2 / 4);
  EXPECT_FALSE(torch::equal(table, learner.model->item_embedding()));
  settings.item_lr = settings.lr;  // the same rate: one group, the table in it
  Learner together(tiny_model(), settings);
  EXPECT_EQ(together.dense->param_groups().size(), 1u);
  EXPECT_EQ(together.dense->param_groups()[0].params().size(),
            together.model->dense_parameters(/*with_item_table=*/true).size());
}

TEST(Stream, EmptyBatchesAndTheLossGuardLeaveTheModelAlone) {
  const auto dir = temp_folder("stream-guard");
  Config config = stream_config(dir);
  const auto setup =
      prepare_stream(config);
  // Only malformed events and events of users never seen (no history to learn from): batches that
  // score but have nothing to train on.
  std::string lines;
  for (int i = 0; i < 300; ++i) lines += (i % 3 ? "broken line\n" : "newcomer" + std::to_string(i) + ",1\n");
  std::istringstream in(lines);
  LineStreamSource source(in, LineFormat::Csv);
  const StreamSummary s = run_stream(config, source, setup.warm, {setup.teacher, "", true, dir + "/empty", "empty"});
  EXPECT_EQ(s.dead_letters, 200u);
  EXPECT_EQ(s.scored, 100u);
  EXPECT_EQ(s.new_users, 100u);
  expect_same_weights(setup.teacher, s.checkpoint);
  SASRec teacher = load_checkpoint_model(setup.teacher, torch::kCPU);

  // A loss above stream.max_loss is skipped before it reaches the weights.
  config.apply_override("stream.max_loss=0.001");
  ReplaySource replay = setup.source;
  replay.skip_to(setup.cut);
  const StreamSummary guarded = run_stream(config, replay, setup.warm, {setup.teacher, "", true, dir + "/guard", "guard"});
  EXPECT_GT(guarded.batches, 0u);
  EXPECT_EQ(guarded.skipped_batches, guarded.batches);
  SASRec unchanged = load_checkpoint_model(guarded.checkpoint, torch::kCPU);
  const auto pu = unchanged->named_parameters();
  for (const auto& p : teacher->named_parameters()) {
    if (p.key() == "item_embedding") continue;  // grew for new items; its old rows are checked below
    EXPECT_TRUE(torch::equal(p.value(), pu[p.key()])) << p.key();
  }
  EXPECT_TRUE(torch::equal(teacher->item_embedding(), unchanged->item_embedding().narrow(0, 0, teacher->item_embedding().size(0))));
  remove_tree(dir);
}

#ifdef FRESHREC_WITH_KAFKA
#include "engine/stream/kafka_source.h"
#include "tests/mock_kafka.h"

using freshrec::testing_support::MockKafka;

// A checkpoint's Kafka position names its topic: resuming on another topic, or from text that is not
// {topic: {partition: next offset}}, is refused with a clear error.
TEST(Stream, KafkaPositionsNameTheirTopic) {
  KafkaOptions options;
  options.brokers = "127.0.0.1:9", options.topic = "events";
  KafkaSource source(options);
  source.seek(R"({"events": {"0": 5, "3": 7}})");
  EXPECT_EQ(nlohmann::json::parse(source.position()), nlohmann::json::parse(R"({"events": {"0": 5, "3": 7}})"));
  for (const char* bad : {R"({"other": {"0": 5}})", R"({"0": 5})", R"({"events": {"x": 5}})",
                          R"({"events": {"0": -1}})", R"({"events": {"0": 1.5}})", "not json", "[]"}) {
    try {
      source.seek(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("kafka: "), std::string::npos) << e.what();
    }
  }
}

TEST(Stream, KafkaSourceSurvivesABrokerRestartAndResumesExactlyOnce) {
  const auto dir = temp_folder("kafka");
  Config config = stream_config(dir);
  config.apply_override("generator.users=200");
  config.apply_override("train.epochs=1");
  config.apply_override("stream.checkpoint_every=256");
  config.apply_override("stream.max_wait_ms=200");
  const auto [replay, cut, warm, teacher] =
      prepare_stream(config);
  std::vector<std::string> messages;
  for (uint64_t p = cut; p < replay.records().size(); ++p) messages.push_back(replay.records()[p].text);
  messages.push_back("{\"this is\": \"not csv\"}");  // one dead letter

  MockKafka kafka(3);
  kafka.create_topic("events", 2);
  kafka.produce("events", messages);
  KafkaOptions options;
  options.brokers = kafka.bootstraps();
  options.topic = "events";
  options.format = LineFormat::Csv;
  options.idle_exit_ms = 12000;  // the broker restart below may pause fetching for seconds
  // A crashed member blocks the group until its session times out: keep that short here.
  options.properties = {{"session.timeout.ms", "6000"}, {"heartbeat.interval.ms", "500"}};

  // First consumer: the process "crashes" in the middle of a micro-batch.
  {
    KafkaSource source(options);
    HookedSource crash(source, 700, [] { throw std::runtime_error("simulated crash"); });
    EXPECT_THROW(run_stream(config, crash, warm, {teacher, "", true, dir + "/kafka", "kafka"}), std::runtime_error);
  }
  // Second consumer, same group: resumes from the checkpoint's offsets and reads to the end, while
  // a broker restarts under it.
  KafkaSource source(options);
  HookedSource restart(source, 100, [&] { kafka.restart_broker(1); });
  const StreamSummary s =
      run_stream(config, restart, warm, {teacher, dir + "/kafka/stream.pt", true, dir + "/kafka", "kafka"});
  EXPECT_EQ(s.events, messages.size());  // every message once: none lost, none twice
  EXPECT_EQ(s.dead_letters, 1u);
  EXPECT_EQ(s.scored, messages.size() - 1);
  remove_tree(dir);
}
#endif

// ---- the stream process killed at random points ---------------------------------------------------

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <random>

namespace {

// Runs `freshrec` with args, its output appended to `log`; kills it with SIGKILL as soon as
// `kill_now()` says so (polled every 10 ms). Returns true when it ran to the end with exit status 0.
bool run_freshrec(const std::vector<std::string>& args, const std::function<bool()>& kill_now,
                  const std::string& log = "/dev/null") {
  const pid_t pid = fork();
  if (pid == 0) {
    std::vector<char*> argv{const_cast<char*>(FRESHREC_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    if (!freopen(log.c_str(), "a", stdout) || !freopen(log.c_str(), "a", stderr)) _exit(126);
    execv(FRESHREC_BINARY, argv.data());
    _exit(127);
  }
  int status = 0;
  while (waitpid(pid, &status, WNOHANG) != pid) {
    if (kill_now()) {
      kill(pid, SIGKILL);
      waitpid(pid, &status, 0);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace

TEST(Stream, SigkilledProcessResumesToTheSameModel) {
  const auto dir = temp_folder("sigkill");
  Config config = stream_config(dir);
  config.apply_override("generator.users=1500");
  config.apply_override("stream.checkpoint_every=0");  // checkpoints by time only: still between batches
  config.apply_override("stream.checkpoint_seconds=0.2");
  config.apply_override("stream.pretrain_fraction=0.7");
  // The log as a CSV file, and a teacher trained on its first 70%.
  const EventLog log = load_event_log(config, nullptr);
  std::ofstream(dir + "/log.csv") << [&] {
    std::string text = "user,item,timestamp\n";
    for (size_t i = 0; i < log.events.size(); ++i) {
      const auto& e = log.events[i];
      text += log.users.external(e.user) + "," + log.items.external(e.item) + "," + std::to_string(e.timestamp) + "\n";
      // Dead letters, which must not repeat: a bad timestamp, bytes that are not UTF-8, a control
      // character in an id, a number beyond a double.
      static const char* const kPoison[] = {"garbled,line,not-a-time\n", "u\xff\xfe,i\xc3\x28,5\n",
                                            "u\x01,item,5\n", "u9,i9,1e400\n"};
      if (i % 400 == 0) text += kPoison[(i / 400) % 4];
    }
    return text;
  }();
  config.apply_override("data.format=csv");
  config.apply_override("data.path=" + dir + "/log.csv");
  config.apply_override("data.csv.time=timestamp");
  const std::string teacher =
      prepare_stream(config, ReplaySource::from_file(dir + "/log.csv", ReaderOptions::from_config(config)), 0.7).teacher;
  std::ofstream(dir + "/config.yaml") << config.to_yaml();

  auto args = [&](const std::string& out, bool resume) {
    std::vector<std::string> a{"--log-level", "warn", "stream", "--config", dir + "/config.yaml",
                               "stream.output_dir=" + out};
    if (resume) a.push_back("--resume");
    else a.insert(a.end(), {"--teacher", teacher});
    return a;
  };
  ASSERT_TRUE(run_freshrec(args(dir + "/whole", false), [] { return false; }));

  // Kill each run at a random moment after it has written a checkpoint of its own (so every kill
  // lands mid-stream, however fast the machine), four times; then let it finish.
  const std::string checkpoint = dir + "/killed/continual/stream.pt";
  auto stamp = [&] { return fs::exists(checkpoint) ? fs::last_write_time(checkpoint) : fs::file_time_type{}; };
  std::mt19937 rng(12345);
  bool done = false;
  int kills = 0;
  for (int attempt = 0; attempt < 40 && !done; ++attempt) {
    const bool resume = fs::exists(checkpoint);
    const auto before = stamp();
    const auto delay = std::chrono::milliseconds(std::uniform_int_distribution<int>(0, 150)(rng));
    std::optional<std::chrono::steady_clock::time_point> kill_at;
    done = run_freshrec(args(dir + "/killed", resume), [&] {
      if (kills >= 4) return false;
      if (!kill_at && stamp() != before) kill_at = std::chrono::steady_clock::now() + delay;
      return kill_at && std::chrono::steady_clock::now() >= *kill_at;
    });
    kills += !done;
  }
  ASSERT_TRUE(done);
  EXPECT_GE(kills, 1);
  RecordProperty("sigkills", kills);
  std::printf("stream process killed %d times before it finished\n", kills);
  const auto whole = read_checkpoint_info(dir + "/whole/continual/stream.pt");
  const auto killed = read_checkpoint_info(dir + "/killed/continual/stream.pt");
  EXPECT_EQ(killed.meta.at("events"), whole.meta.at("events"));  // every event applied once
  EXPECT_EQ(killed.meta.at("source_position"), whole.meta.at("source_position"));
  auto lines = [](const std::string& path) {
    std::ifstream in(path);
    size_t n = 0;
    for (std::string line; std::getline(in, line);) ++n;
    return n;
  };
  EXPECT_GT(whole.meta.at("dead_letters").get<size_t>(), 0u);
  EXPECT_EQ(lines(dir + "/killed/continual/dead_letters.jsonl"), whole.meta.at("dead_letters").get<size_t>());
  EXPECT_EQ(lines(dir + "/killed/continual/dead_letters.jsonl"), lines(dir + "/whole/continual/dead_letters.jsonl"));
  auto text_of = [](const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  };
  EXPECT_EQ(text_of(dir + "/killed/continual/dead_letters.jsonl"), text_of(dir + "/whole/continual/dead_letters.jsonl"));
  EXPECT_NE(text_of(dir + "/whole/continual/dead_letters.jsonl").find("\"text_base64\""), std::string::npos);
  expect_same_weights(dir + "/whole/continual/stream.pt", dir + "/killed/continual/stream.pt");
  remove_tree(dir);
}

#ifdef FRESHREC_WITH_KAFKA
namespace {

// The freshrec process consuming a topic while a second member joins its consumer group and leaves it
// (two real rebalances: partitions revoked and assigned again, under the group's `assignment`
// strategy), then killed with SIGKILL and resumed: every message is applied exactly once.
void expect_kafka_rebalances_and_a_sigkill_apply_every_message_once(const std::string& assignment) {
  const auto dir = temp_folder("kafka-kill");
  Config config = stream_config(dir);
  config.apply_override("generator.users=200");
  config.apply_override("train.epochs=1");
  const auto [replay, cut, warm, teacher] =
      prepare_stream(config, 0.5);
  std::vector<std::string> messages;
  for (uint64_t p = cut; p < replay.records().size(); ++p) messages.push_back(replay.records()[p].text);
  ASSERT_GT(messages.size(), 1000u);

  MockKafka kafka(1);
  kafka.create_topic("events", 2);
  config.apply_override("stream.source=kafka");
  config.apply_override("stream.line_format=csv");
  config.apply_override("stream.kafka.brokers=" + kafka.bootstraps());
  config.apply_override("stream.kafka.topic=events");
  config.apply_override("stream.kafka.group=rebalanced");
  // A killed member holds its partitions until its session times out: keep that short here.
  config.apply_override("stream.kafka.properties={session.timeout.ms: 6000, heartbeat.interval.ms: 500, "
                        "partition.assignment.strategy: " + assignment + "}");
  config.apply_override("stream.checkpoint_every=100");  // most moments have events read but not yet checkpointed
  config.apply_override("stream.max_wait_ms=50");
  config.apply_override("stream.output_dir=" + dir + "/run");
  std::ofstream(dir + "/config.yaml") << config.to_yaml();
  const std::string checkpoint = dir + "/run/continual/stream.pt";
  auto stamp = [&] { return fs::exists(checkpoint) ? fs::last_write_time(checkpoint) : fs::file_time_type{}; };

  // A second member of the group: joins, holds what the group assigns it for a while, leaves. It
  // commits nothing.
  std::atomic<int> intruder_partitions{-1};
  std::atomic<bool> intruder_done{false};
  auto intruder = [&] {
    std::string error;
    std::unique_ptr<RdKafka::Conf> conf(RdKafka::Conf::create(RdKafka::Conf::CONF_GLOBAL));
    conf->set("bootstrap.servers", kafka.bootstraps(), error);
    conf->set("group.id", "rebalanced", error);
    conf->set("enable.auto.commit", "false", error);
    conf->set("session.timeout.ms", "6000", error);
    conf->set("heartbeat.interval.ms", "500", error);
    conf->set("partition.assignment.strategy", assignment, error);
    std::unique_ptr<RdKafka::KafkaConsumer> member(RdKafka::KafkaConsumer::create(conf.get(), error));
    member->subscribe({"events"});
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    std::vector<RdKafka::TopicPartition*> held;
    while (held.empty() && std::chrono::steady_clock::now() < deadline) {
      delete member->consume(100);
      member->assignment(held);
    }
    intruder_partitions = static_cast<int>(held.size());
    RdKafka::TopicPartition::destroy(held);
    for (int i = 0; i < 15; ++i) delete member->consume(100);
    member->close();
    intruder_done = true;
  };

  // First run: messages trickle in (20 every 50 ms, so the consumer is always in the middle of them);
  // once it has checkpointed, the second member joins and leaves; the last 30% wait until it has
  // left; after the next checkpoint the process is killed.
  const size_t hold_back = messages.size() * 7 / 10;
  size_t produced = 0;
  std::thread intruder_thread;
  auto next_batch = std::chrono::steady_clock::now();
  std::optional<fs::file_time_type> stamp_after_intruder;
  const bool finished = run_freshrec(
      {"--log-level", "warn", "stream", "--config", dir + "/config.yaml", "--teacher", teacher,
       "stream.kafka.idle_exit_ms=120000"},
      [&] {
        if (std::chrono::steady_clock::now() >= next_batch && (intruder_done || produced < hold_back)) {
          const size_t until = std::min(messages.size(), intruder_done ? produced + 20 : std::min(hold_back, produced + 20));
          kafka.produce("events", messages, produced, until);
          produced = until;
          next_batch = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
        }
        if (!intruder_thread.joinable() && fs::exists(checkpoint)) intruder_thread = std::thread(intruder);
        if (intruder_done && !stamp_after_intruder) stamp_after_intruder = stamp();
        return stamp_after_intruder && produced > hold_back && stamp() != *stamp_after_intruder;
      },
      dir + "/first.log");
  if (intruder_thread.joinable()) intruder_thread.join();
  ASSERT_FALSE(finished) << "the first run was to be killed";
  EXPECT_GT(intruder_partitions.load(), 0) << "the second member never got a partition: no rebalance happened";
  kafka.produce("events", messages, produced);

  // Second run: resumes from the checkpoint and reads to the end.
  ASSERT_TRUE(run_freshrec({"--log-level", "warn", "stream", "--config", dir + "/config.yaml", "--resume",
                            "stream.kafka.idle_exit_ms=4000"},
                           [] { return false; }, dir + "/second.log"))
      << std::ifstream(dir + "/second.log").rdbuf();
  const auto info = read_checkpoint_info(checkpoint);
  EXPECT_EQ(info.meta.at("events").get<size_t>(), messages.size());  // none lost, none twice
  const auto position = nlohmann::json::parse(info.meta.at("source_position").get<std::string>());
  EXPECT_EQ(position.at("events").at("0").get<size_t>(), (messages.size() + 1) / 2);
  EXPECT_EQ(position.at("events").at("1").get<size_t>(), messages.size() / 2);
  EXPECT_EQ(info.tensors.at("history_lengths").sum().item<int64_t>(), static_cast<int64_t>(messages.size()));
  remove_tree(dir);
}

}  // namespace

TEST(Stream, KafkaRebalancesAndASigkillApplyEveryMessageOnce) {
  expect_kafka_rebalances_and_a_sigkill_apply_every_message_once("range");  // eager: all revoked, then assigned
}

TEST(Stream, KafkaCooperativeRebalancesAndASigkillApplyEveryMessageOnce) {
  expect_kafka_rebalances_and_a_sigkill_apply_every_message_once("cooperative-sticky");  // incremental
}
#endif
