// `freshrec bench train`: one SASRec training step (forward, loss over the catalog, backward,
// clipping, Adam) by freshrec and by the PyTorch-eager reference in tools/bench/sasrec_reference.py,
// on the same device, shapes, loss and precision, in one run; prints both and their ratio.
#include <ATen/autocast_mode.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>

#include "engine/bench/reference.h"
#include "engine/jobs.h"
#include "engine/runtime.h"
#include "engine/train/dense_adam.h"
#include "engine/train/losses.h"
#include "engine/train/sparse_adam.h"
#include "models/sasrec.h"

namespace freshrec {
namespace {

using Clock = std::chrono::steady_clock;

void synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize();
}


struct Timing {
  double ms_per_step = 0;
  double loss = 0;
};

// The benchmarked model's shape.
SASRecOptions model_options(const TrainBenchOptions& o) {
  SASRecOptions mo;
  mo.num_items = o.items, mo.hidden = o.hidden, mo.blocks = o.blocks, mo.heads = o.heads, mo.maxlen = o.length;
  mo.dropout = 0.2;
  return mo;
}

Timing time_freshrec(const TrainBenchOptions& o, const torch::Device& device) {
  torch::manual_seed(o.seed);
  SASRec model(model_options(o));
  model->to(device);
  model->train();
  const bool sampled = o.loss == "sampled";
  const std::vector<torch::Tensor> dense = model->dense_parameters(/*with_item_table=*/!o.sparse);
  SparseRowAdam sparse{nullptr};
  if (o.sparse) {
    ops::RowwiseAdamOptions ro;
    ro.lr = 1e-3, ro.beta1 = 0.9, ro.beta2 = 0.98;
    sparse = SparseRowAdam(model->item_embedding(), ro, 0);
    model->set_sparse_gradients(&sparse->gradients());
  }
  FusedAdam adam(dense, torch::optim::AdamOptions(1e-3).betas({0.9, 0.98}));
  auto long_options = torch::TensorOptions().dtype(torch::kLong).device(device);
  auto items = torch::randint(1, o.items + 1, {o.batch, o.length}, long_options);
  auto targets = torch::randint(1, o.items + 1, {o.batch * o.length}, long_options);
  auto log_q = torch::zeros({o.items + 1}, torch::TensorOptions().device(device));  // uniform negatives
  const int64_t chunk = o.ce_chunk > 0 ? o.ce_chunk : (device.is_cuda() ? 8192 : 256);
  const bool bf16 = o.precision == "bf16";
  torch::Tensor loss;
  auto step = [&] {
    at::autocast::set_autocast_enabled(device.type(), bf16);
    if (bf16) at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
    auto hidden = model->forward(items).reshape({-1, o.hidden});
    if (sampled) {
      auto negatives = torch::randint(1, o.items + 1, {o.negatives}, long_options);
      loss = sampled_softmax_cross_entropy(hidden, model->lookup_items(targets), model->lookup_items(negatives), targets,
                                           negatives, log_q);
    } else {
      loss = full_softmax_cross_entropy(hidden, model->item_embedding(), targets, chunk);
    }
    at::autocast::set_autocast_enabled(device.type(), false);
    at::autocast::clear_cache();
    adam.zero_grad();
    loss.backward();
    clip_grad_norm(dense, 1.0);
    adam.step();
    if (o.sparse) sparse->step(1e-3);
  };
  for (int64_t i = 0; i < o.warmup; ++i) step();
  synchronize(device);
  const auto begun = Clock::now();
  for (int64_t i = 0; i < o.steps; ++i) step();
  synchronize(device);
  const double seconds = std::chrono::duration<double>(Clock::now() - begun).count();
  return {1000 * seconds / o.steps, loss.item<double>()};
}

// The optimizer part of the step alone (clip to norm 1, then Adam on the dense parameters of the
// model's shapes), LibTorch's (clip_grad_norm_ reading the norm back, Adam's per-tensor ops) against
// ours (clip_grad_norm, FusedAdam): ms per step of each.
std::pair<double, double> time_dense_optimizers(const TrainBenchOptions& o, const torch::Device& device) {
  SASRec model(model_options(o));
  model->to(device);
  const std::vector<torch::Tensor> dense = model->dense_parameters(/*with_item_table=*/!o.sparse);
  for (auto p : dense) p.mutable_grad() = torch::randn_like(p);
  const auto options = torch::optim::AdamOptions(1e-3).betas({0.9, 0.98});
  torch::optim::Adam libtorch(dense, options);
  FusedAdam fused(dense, options);
  const int64_t repeats = std::max<int64_t>(20, 2 * o.steps);
  auto time = [&](const std::function<void()>& step) {
    for (int i = 0; i < 3; ++i) step();
    synchronize(device);
    const auto begun = Clock::now();
    for (int64_t i = 0; i < repeats; ++i) step();
    synchronize(device);
    return 1000 * std::chrono::duration<double>(Clock::now() - begun).count() / repeats;
  };
  const double before = time([&] {
    torch::nn::utils::clip_grad_norm_(dense, 1.0);
    libtorch.step();
  });
  const double after = time([&] {
    clip_grad_norm(dense, 1.0);
    fused.step();
  });
  return {before, after};
}

}  // namespace

nlohmann::json run_python_reference(const std::string& command) {
  spdlog::info("reference: {}", command);
  FILE* pipe = ::popen((command + " 2>&1").c_str(), "r");
  if (!pipe) throw std::runtime_error("cannot run: " + command);
  std::string out;
  char buffer[4096];
  while (size_t n = std::fread(buffer, 1, sizeof buffer, pipe)) out.append(buffer, n);
  const int status = ::pclose(pipe);
  nlohmann::json result;
  for (size_t at = 0, end; at < out.size(); at = end + 1) {  // the JSON line among any warnings
    end = out.find('\n', at);
    if (end == std::string::npos) end = out.size();
    if (out[at] == '{') result = nlohmann::json::parse(out.substr(at, end - at));
  }
  if (status != 0 || result.is_null())
    throw std::runtime_error("the reference failed (status " + std::to_string(status) + "): " + command + "\n" + out);
  return result;
}

int run_train_bench_job(const TrainBenchOptions& o) {
  if (o.steps <= 0 || o.items <= 0 || o.batch <= 0 || o.length <= 0)
    throw std::invalid_argument("bench train: --steps, --items, --batch and --length must be positive");
  if (o.sparse && o.loss != "sampled") throw std::invalid_argument("bench train: --sparse needs --loss sampled");
  configure_threads(o.threads);
  const torch::Device device = select_device(o.device);
  if (device.is_cuda()) {
    const bool tf32 = o.precision == "tf32";
    at::globalContext().setAllowTF32CuBLAS(tf32);
    at::globalContext().setAllowTF32CuDNN(tf32);
  }
  std::printf("SASRec training step on %s: %lld items, hidden %lld, %lld blocks, %lld heads, batch %lld x %lld, "
              "%s loss%s, %s, %d threads\n",
              device.str().c_str(), static_cast<long long>(o.items), static_cast<long long>(o.hidden),
              static_cast<long long>(o.blocks), static_cast<long long>(o.heads), static_cast<long long>(o.batch),
              static_cast<long long>(o.length), o.loss.c_str(), o.sparse ? " + sparse embeddings" : "",
              o.precision.c_str(), torch::get_num_threads());
  std::fflush(stdout);
  const Timing ours = time_freshrec(o, device);

  std::string command = o.python + " -W ignore " + o.reference + " --device " + device.str() +
                        " --items " + std::to_string(o.items) + " --hidden " + std::to_string(o.hidden) +
                        " --blocks " + std::to_string(o.blocks) + " --heads " + std::to_string(o.heads) + " --batch " +
                        std::to_string(o.batch) + " --length " + std::to_string(o.length) + " --loss " + o.loss +
                        " --negatives " + std::to_string(o.negatives) + " --steps " + std::to_string(o.steps) +
                        " --warmup " + std::to_string(o.warmup) + " --precision " + o.precision + " --threads " +
                        std::to_string(torch::get_num_threads());
  double reference_ms = 0;
  std::string reference_note;
  if (o.python.empty()) {
    reference_note = "(reference skipped: --python \"\")";
  } else {
    const nlohmann::json r = run_python_reference(command);
    reference_ms = r.at("ms_per_step").get<double>();
    reference_note = "torch " + r.at("torch").get<std::string>();
  }
  std::printf("%-34s %12s %12s %10s\n", "implementation", "ms/step", "steps/s", "loss");
  std::printf("%-34s %12.2f %12.2f %10.4f\n", "freshrec (C++ LibTorch)", ours.ms_per_step, 1000 / ours.ms_per_step,
              ours.loss);
  if (reference_ms > 0) {
    std::printf("%-34s %12.2f %12.2f %10s  %s\n", "PyTorch eager reference (Python)", reference_ms, 1000 / reference_ms,
                "", reference_note.c_str());
    std::printf("speed-up (steps/s, freshrec / reference): %.2fx\n", reference_ms / ours.ms_per_step);
  } else {
    std::printf("%s\n", reference_note.c_str());
  }
  const auto [libtorch_ms, fused_ms] = time_dense_optimizers(o, device);
  std::printf("optimizer part alone (clip + Adam on the dense parameters): LibTorch clip_grad_norm_ + Adam %.3f ms, "
              "freshrec clip_grad_norm + FusedAdam %.3f ms (%.2fx)\n",
              libtorch_ms, fused_ms, libtorch_ms / fused_ms);
  return 0;
}

}  // namespace freshrec
