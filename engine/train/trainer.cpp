// Offline trainer; see trainer.h.
#include "engine/train/trainer.h"

#include <spdlog/spdlog.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "engine/checkpoint/checkpoint.h"
#include "engine/data/sequences.h"
#include "engine/eval/evaluator.h"
#include "engine/data/item_features.h"
#include "engine/dist/model_averager.h"
#include "engine/dist/process_group.h"
#include "engine/finetune/finetune.h"
#include "engine/progress.h"
#include "engine/runtime.h"
#include "engine/train/distill.h"
#include "engine/train/epoch_batches.h"
#include "engine/train/learner.h"
#include "engine/train/losses.h"
#include "engine/io/atomic_file.h"

namespace freshrec {
namespace {

// Per-epoch seeding: epoch e always sees the same order and dropout masks, resumed or not.
uint64_t epoch_seed(uint64_t seed, int64_t epoch) { return seed * 1000003ULL + static_cast<uint64_t>(epoch); }

EvalOptions eval_options_from_config(const Config& config) {
  EvalOptions o;
  o.ks = config.get_int_list("eval.ks");
  if (std::find(o.ks.begin(), o.ks.end(), 10) == o.ks.end()) o.ks.push_back(10);  // early stopping reads NDCG@10
  o.batch_size = config.get_int("eval.batch_size");
  o.filter_seen = config.get_bool("eval.filter_seen");
  return o;
}

// How the trainer runs, read from the config and checked against itself and the job before anything
// is made; a conflict is a ConfigError naming the key.
struct TrainModes {
  bool sampled = false;       // train.loss=sampled
  bool exclude_seen = false;  // train.exclude_seen
  bool local_sgd = false;     // dist.mode=local_sgd in a job of several
  bool sharded = false;       // dist.item_table=row_sharded in a job of several
};

TrainModes check_modes(const Config& config, const DistEnv& dist, bool distilling, bool finetuning) {
  const bool sampled = config.get_string("train.loss") == "sampled";
  const bool sparse = config.get_bool("train.sparse_embeddings");
  const bool row_sharded = config.get_string("dist.item_table") == "row_sharded";
  const bool exclude_seen = config.get_bool("train.exclude_seen");
  if (dist.distributed() && row_sharded && exclude_seen)
    throw ConfigError(config.origin("train.exclude_seen") +
                      ": train.exclude_seen is not supported over a row-sharded item table (dist.item_table=row_sharded)");
  if (exclude_seen && sampled)
    throw ConfigError(config.origin("train.exclude_seen") +
                      ": train.exclude_seen needs train.loss=full (it shapes the full-softmax cross-entropy)");
  if (config.get_int("train.epochs") <= 0 || config.get_int("train.batch_size") <= 0)
    throw ConfigError("train.epochs and train.batch_size must be positive");
  if (const double decay = config.get_float("train.lr_decay"); decay <= 0 || decay > 1)
    throw ConfigError(config.origin("train.lr_decay") + ": train.lr_decay must be in (0, 1], got " + std::to_string(decay));
  if (sampled && config.get_int("train.negatives") <= 0)
    throw ConfigError("train.negatives must be positive for train.loss=sampled");
  if (dist.distributed() && sparse && !row_sharded)
    throw ConfigError(config.origin("train.sparse_embeddings") +
                      ": a job of several processes shards a row-wise item table across its ranks "
                      "(dist.item_table=row_sharded) or trains it in the dense optimizer (train.sparse_embeddings=false)");
  // dist.mode=local_sgd: each rank its own users and its own steps; the weights averaged in rounds.
  const bool local_sgd = dist.distributed() && config.get_string("dist.mode") == "local_sgd";
  if (config.get_string("dist.mode") == "local_sgd") {
    if (config.get_float("dist.noise_multiplier") > 0 && config.get_float("dist.clip_delta") <= 0)
      throw ConfigError(config.origin("dist.noise_multiplier") +
                        ": dist.noise_multiplier needs dist.clip_delta > 0 (the noise is scaled to the clip)");
    if (!dist.distributed()) spdlog::warn("dist.mode=local_sgd: a job of one process trains as usual");
  }
  // dist.item_table=row_sharded: each rank holds its rows of the item table (ShardedItemTable).
  const bool sharded = dist.distributed() && row_sharded;
  if (row_sharded && !dist.distributed())
    spdlog::warn("dist.item_table=row_sharded: a job of one process holds the whole table (updated row-wise)");
  if (sharded && local_sgd)
    throw ConfigError(config.origin("dist.item_table") + ": dist.item_table=row_sharded needs dist.mode=data_parallel "
                      "(local SGD averages whole replicas)");
  if (sharded && (distilling || finetuning))
    throw ConfigError(config.origin("dist.item_table") + ": dist.item_table=row_sharded trains a model from scratch "
                      "(distillation and fine-tunes read the whole table)");
  return {sampled, exclude_seen, local_sgd, sharded};
}

}  // namespace

TrainSummary train_model(const Config& config, const EventLog& log, const std::string& resume_path,
                         const std::string& teacher_path, const PretrainedModel* from) {
  configure_threads(config.get_int("train.threads"));
  // A job of several processes (torchrun): data-parallel over c10d, each rank on its own device.
  const DistEnv dist = DistEnv::from_environment();
  const torch::Device device = job_device(dist, select_device(config.get_string("train.device")));
  const bool bf16 = configure_precision(config.get_string("train.precision"));
  const uint64_t seed = static_cast<uint64_t>(config.get_int("train.seed"));
  const int64_t epochs = config.get_int("train.epochs"), batch_size = config.get_int("train.batch_size");
  const int64_t patience = config.get_int("train.patience"), warmup = config.get_int("train.warmup_steps");
  const int64_t chunk = config.get_int("train.ce_chunk"), negatives = config.get_int("train.negatives");
  const double lr = config.get_float("train.lr");
  const TrainModes modes = check_modes(config, dist, !teacher_path.empty(), from != nullptr);
  const bool sampled = modes.sampled, exclude_seen = modes.exclude_seen, local_sgd = modes.local_sgd,
             sharded = modes.sharded;
  const std::filesystem::path out_dir = config.get_string("train.output_dir");  // made once the set-up has passed
  const double noise = config.get_float("dist.noise_multiplier");
  const std::unique_ptr<ProcessGroup> group = join_job(dist, config, device);
  if (group) {
    if (local_sgd)
      spdlog::info("local SGD over {} processes ({}): each trains on its own users, batches of {}, and the weights "
                   "are averaged every {} steps", group->size(), group->backend(), std::max<int64_t>(1, batch_size / group->size()),
                   config.get_int("dist.local_steps"));
    else
      spdlog::info("data-parallel over {} processes ({}): each takes its share of every batch of {} users", group->size(),
                   group->backend(), batch_size);
  }
  const bool writer = dist.rank == 0;  // the one process that writes checkpoints, history and test results
  // Each rank evaluates its share of the users; the shares' sums make the whole set's metrics, the
  // same on every rank (so are the early-stopping and decay decisions taken from them).
  auto whole = [&](const RankingMetrics& share) { return summed(group.get(), share); };

  const UserSequences sequences = UserSequences::from_log(log);
  const auto train_users_all = sequences.training_users();
  if (train_users_all.empty()) throw std::runtime_error("training data has no user with two or more items");
  EvalOptions eval_options = eval_options_from_config(config);
  if (dist.distributed()) eval_options.shard = dist.rank, eval_options.shards = dist.world_size;
  eval_options.lockstep = sharded;

  torch::manual_seed(seed);
  SASRec model(sasrec_options_from_config(config, log.num_items()));
  model->to(device);
  // A fine-tune starts from the source's weights, aligned to this data's items (a resumed one then
  // loads its own checkpoint over them), and trains what finetune.* says.
  std::optional<FinetunePlan> plan;
  if (from) {
    if (!teacher_path.empty()) throw std::invalid_argument("a fine-tune cannot also distil from a teacher");
    const FinetuneOptions finetune = FinetuneOptions::from_config(config);
    ItemFeatures features;
    if (finetune.new_items == "content") features = read_item_features(finetune.item_features);
    const Alignment aligned = align_to_catalogue(model, *from, log.items, finetune.new_items, &features);
    plan.emplace(model, finetune, aligned.known_rows);
    spdlog::info("fine-tuning {} ({}): {} of this data's {} items known to it, {} new ({} rows{}); {}", from->path,
                 from->kind, aligned.known, log.items.size(), aligned.fresh, finetune.new_items,
                 finetune.new_items == "content" ? ", " + std::to_string(aligned.from_features) + " from shared features" : "",
                 plan->describe());
  }
  // A fine-tune's plan names the dense parameters it trains and its item adapter.
  TrainedParameters trained;
  if (plan) trained = {plan->dense_trainable(), plan->item_adapter()};
  const int64_t parameters = model->parameter_count();  // before a sharded table leaves this rank its rows alone
  Learner learner(model, LearnerSettings::training(config, from != nullptr), std::move(trained),
                  sharded ? group.get() : nullptr);
  ShardedItemTable* shards = learner.item_shards();
  if (shards)
    spdlog::info("item table sharded by rows over {} processes: this one holds {} of its {} rows", group->size(),
                 shards->local_rows(), shards->rows());
  learner.set_process_group(local_sgd ? nullptr : group.get(),  // local SGD: no per-step reduction
                            static_cast<int64_t>(config.get_float("dist.bucket_mb") * (1 << 20)));
  std::optional<ModelAverager> averager;
  if (local_sgd) {
    AveragingSettings a;
    a.every = config.get_int("dist.local_steps");
    a.clip_delta = config.get_float("dist.clip_delta");
    a.noise_multiplier = noise;
    a.seed = static_cast<uint64_t>(config.get_int("dist.noise_seed"));
    std::vector<torch::Tensor> averaged;
    for (const auto& g : learner.dense->param_groups())
      for (const auto& p : g.params()) averaged.push_back(p);
    averager.emplace(std::move(averaged), *group, a);
  }
  torch::optim::Optimizer& optimizer = *learner.dense;
  torch::nn::Module* sparse_state = learner.sparse_state();  // saved with checkpoints
  const NegativeSampler sampler(sequences.training_item_counts(), config.get_string("train.negative_sampler") == "uniform");
  const auto log_q = sampler.log_q().to(device);

  // Distillation: the teacher must know the same items under the same ids and see as much history.
  SASRec teacher{nullptr};
  DistillOptions distill;
  if (!teacher_path.empty()) {
    distill = DistillOptions::from_config(config);
    const auto teacher_info = read_checkpoint_info(teacher_path);
    if (teacher_info.items.serialize() != log.items.serialize())
      throw std::runtime_error(teacher_path + ": the teacher was trained on other items (" +
                               std::to_string(teacher_info.items.size()) + " items, this data has " +
                               std::to_string(log.items.size()) + " or in another order); distil on the teacher's data");
    teacher = load_checkpoint_model(teacher_path, device);
    teacher->eval();
    for (auto& p : teacher->parameters()) p.set_requires_grad(false);
    if (teacher->options().maxlen < model->options().maxlen)
      throw ConfigError(config.origin("model.maxlen") + ": the student's model.maxlen (" +
                        std::to_string(model->options().maxlen) + ") exceeds the teacher's (" +
                        std::to_string(teacher->options().maxlen) + ")");
    if (distill.init_from_teacher && model->options().hidden > log.num_items())
      throw ConfigError(config.origin("distill.init_items") + ": distill.init_items=teacher needs at least as many items (" +
                        std::to_string(log.num_items()) + ") as the student's model.hidden (" +
                        std::to_string(model->options().hidden) + ")");
    if (distill.init_from_teacher && model->options().hidden > teacher->options().hidden)
      throw ConfigError(config.origin("distill.init_items") + ": distill.init_items=teacher projects the teacher's rows onto "
                        "fewer dimensions: the student's model.hidden (" + std::to_string(model->options().hidden) +
                        ") exceeds the teacher's (" + std::to_string(teacher->options().hidden) + ")");
    if (distill.init_from_teacher && resume_path.empty()) {
      torch::NoGradGuard no_grad;
      const int64_t known = log.num_items() + 1;
      model->item_embedding().narrow(0, 0, known).copy_(project_teacher_items(teacher->item_table(), known, model->options().hidden));
      spdlog::info("the student's item table starts as the teacher's rows projected onto their {} leading singular vectors",
                   model->options().hidden);
    }
    spdlog::info("distilling from {} ({} parameters): alpha {}, temperature {}, soft targets over {}", teacher_path,
                 teacher->parameter_count(), distill.alpha, distill.temperature,
                 sampled || distill.top_k_targets ? "each row's teacher top " + std::to_string(distill.top_k) +
                                                        (sampled ? " and the sampled negatives" : "")
                                                  : "the full catalog");
    if (distill.ranking_k > 0)
      spdlog::info("ranking distillation over the teacher's top {} items, weight {}", distill.ranking_k, distill.ranking_weight);
  }

  CheckpointInfo info;
  info.config_yaml = config.to_yaml();
  info.items = log.items;
  info.users = log.users;
  // A fine-tune that freezes weights saves them once, as the base of checkpoints that hold the
  // trained weights alone (finetune.checkpoint_weights=trained). The base is written just before the
  // run's first checkpoint, so a run that fails to start leaves an earlier run's files as they were;
  // a resume that writes where its run did keeps that run's base.
  const bool trained_only = plan && plan->freezes_weights() && config.get_string("finetune.checkpoint_weights") == "trained";
  nlohmann::json base;  // the checkpoints' "base" entry, once the base exists
  TrainSummary summary;
  summary.parameters = parameters;
  summary.world_size = dist.world_size;
  summary.trained_parameters = plan ? plan->trained_parameters() : summary.parameters;
  summary.best_checkpoint = (out_dir / "best.pt").string();
  summary.last_checkpoint = (out_dir / "last.pt").string();
  int64_t start_epoch = 1, step = 0, stale = 0;
  double best_ndcg = -1;
  // Plateau schedule: after `patience` epochs without a better validation, go back to the best
  // checkpoint with the learning rate times train.lr_decay, up to train.lr_decays times; then stop.
  const double lr_decay = config.get_float("train.lr_decay");
  const int64_t lr_decays = config.get_int("train.lr_decays");
  double lr_scale = 1.0;
  int64_t decays_done = 0;
  if (!resume_path.empty()) {
    const auto saved = read_checkpoint_info(resume_path);
    const std::string saved_kind = saved.meta.value("kind", "train");
    if (from && saved_kind != "finetune")
      throw std::runtime_error(resume_path + ": a " + saved_kind + " checkpoint, not a fine-tune's: resume a fine-tune from its own last.pt");
    if (!from && saved_kind == "finetune")
      throw std::runtime_error(resume_path + ": a fine-tune's checkpoint: resume it with freshrec finetune --from SOURCE --resume");
    if (from && saved.meta.value("finetune_from", "") != from->path)
      spdlog::warn("{} was fine-tuned from {}, resumed with --from {}", resume_path, saved.meta.value("finetune_from", ""), from->path);
    const auto saved_options = sasrec_options_from_config(saved.config(), saved.meta.at("num_items").get<int64_t>());
    const auto& now = model->options();
    if (saved_options.num_items != now.num_items || saved_options.hidden != now.hidden ||
        saved_options.blocks != now.blocks || saved_options.heads != now.heads || saved_options.maxlen != now.maxlen ||
        saved_options.ffn_hidden != now.ffn_hidden)
      throw std::runtime_error(resume_path + ": the checkpoint's model or item count differs from this config and data");
    load_checkpoint_weights(resume_path, model);
    const auto resumed_dir = std::filesystem::absolute(resume_path).parent_path();
    std::error_code not_found;  // out_dir not made yet: another folder
    const bool same_folder = std::filesystem::equivalent(resumed_dir, out_dir, not_found) && !not_found;
    if (trained_only && same_folder && saved.meta.contains("base")) base = saved.meta.at("base");
    // Resumed into another folder: the run's best so far stays where it is until a better one comes.
    if (!same_folder) {
      if (!std::filesystem::exists(resumed_dir / "best.pt"))
        throw std::runtime_error(resume_path + ": its run's best.pt is not beside it; resume in its own folder or copy best.pt there");
      summary.best_checkpoint = (resumed_dir / "best.pt").string();
    }
    if (plan) plan->snapshot();  // frozen rows keep the values the run froze
    load_checkpoint_optimizer(resume_path, optimizer, sparse_state);
    if (shards) shards->keep_own_rows();  // the checkpoint holds the whole table
    if (averager) averager->restart();
    start_epoch = saved.meta.at("epoch").get<int64_t>() + 1;
    step = saved.meta.at("step").get<int64_t>();
    best_ndcg = saved.meta.at("best_validation_ndcg10").get<double>();
    summary.best_epoch = saved.meta.at("best_epoch").get<int64_t>();
    stale = saved.meta.at("stale_epochs").get<int64_t>();
    lr_scale = saved.meta.value("lr_scale", 1.0);
    decays_done = saved.meta.value("lr_decays_done", int64_t{0});
    spdlog::info("resuming from {} after epoch {} (best NDCG@10 {:.4f} at epoch {})", resume_path, start_epoch - 1,
                 best_ndcg, summary.best_epoch);
  }
  spdlog::info("training SASRec: {} users, {} items, {} parameters, {} loss, on {} ({} threads)",
               sequences.num_users(), log.num_items(), summary.parameters, config.get_string("train.loss"),
               device.str(), torch::get_num_threads());

  const double log_every = config.get_float("train.log_every_seconds");
  const auto started = std::chrono::steady_clock::now();
  std::filesystem::create_directories(out_dir);
  std::ofstream history;
  if (writer) history.open(out_dir / "history.jsonl", std::ios::app);
  int64_t epoch = start_epoch;
  summary.epochs_run = start_epoch - 1;
  for (;; ++epoch) {
    if (stale >= patience) {
      if (decays_done >= lr_decays) break;
      load_checkpoint_weights(summary.best_checkpoint, model);
      load_checkpoint_optimizer(summary.best_checkpoint, optimizer, sparse_state);
      if (shards) shards->keep_own_rows();
      if (averager) averager->restart();
      lr_scale *= lr_decay, ++decays_done, stale = 0;
      spdlog::info("no better validation for {} epochs: back to the best (epoch {}), learning rate x{} (now {:g})",
                   patience, summary.best_epoch, lr_decay, lr * lr_scale);
    }
    if (epoch > epochs) break;
    // Every rank draws alike where that makes the job one process's (data-parallel without dropout:
    // the sampled negatives are the ones one process draws for the whole batch); with dropout, and
    // with local SGD, each rank draws its own masks and negatives.
    const bool own_draws = dist.distributed() && (local_sgd || model->options().dropout > 0);
    torch::manual_seed(epoch_seed(seed, epoch) + (own_draws ? 7919ULL * static_cast<uint64_t>(dist.rank) : 0ULL));
    const EpochBatches plan_of_epoch(train_users_all, batch_size, dist.rank, dist.world_size, local_sgd,
                                     epoch_seed(seed, epoch));
    const int64_t batches = plan_of_epoch.steps();
    // After a local-SGD round: the noise spared neither the padding row nor a fine-tune's frozen rows;
    // put them back, and count the next round's deltas from there.
    auto after_round = [&] {
      torch::NoGradGuard no_grad;
      if (noise > 0) model->item_embedding()[0].zero_();
      if (plan) plan->restore();
      averager->restart();
    };
    int64_t taken = 0;  // steps this rank took (local SGD: fewer once its users have run out)
    model->train();
    Progress progress("epoch " + std::to_string(epoch) + "/" + std::to_string(epochs), batches, log_every);
    auto loss_sum = torch::zeros({}, torch::TensorOptions().device(device));  // this process's batch means
    auto shared_sum = torch::zeros({}, torch::TensorOptions().device(device));  // its shares of the global means
    const auto loop_started = std::chrono::steady_clock::now();
    const double collectives_before = group ? group->collective_seconds() : 0.0;
    const int64_t bytes_before = group ? group->allreduce_bytes() : 0;
    const int64_t exchanged_before = group ? group->all_to_all_bytes() : 0;
    for (int64_t b = 0; b < batches; ++b) {
      const std::vector<int32_t> chunk_users = plan_of_epoch.users(b);
      const double ramp = std::min(1.0, static_cast<double>(step + 1) / std::max<int64_t>(warmup, 1));
      auto rate = [&](double base) { return lr_scale * (warmup > 0 ? base * ramp : base); };
      if (chunk_users.empty()) {
        if (local_sgd) {  // this rank's users have run out: it waits for the round with its weights as they are
          ++step;
          if (averager->after_step(/*trained=*/false, b + 1 == batches, step)) after_round();
          continue;
        }
        // Data-parallel, a last batch smaller than the job: this rank's share is empty.
        if (shards) {  // its lookups still take part in the table's exchanges (with no rows), in the same order
          const auto none = torch::zeros({0, model->options().maxlen}, torch::dtype(torch::kLong).device(device));
          const auto hidden = model->forward(none);
          const auto zero =
              sampled ? hidden.sum() + model->lookup_items(none.view({0})).sum() +
                            model->lookup_items(sampler.sample(negatives, device)).sum()
                      : hidden.sum() + shards->full_softmax_loss(hidden.reshape({0, model->options().hidden}),
                                                                 none.view({0}), chunk);
          group->sum(0);
          learner.step(zero * 0.0, rate);
        } else {
          group->sum(0);
          learner.step(model->item_embedding().sum() * 0.0, rate);  // its gradients count 0 in the sums
        }
        if (plan) plan->restore();
        ++step;
        continue;
      }
      const SequenceBatch batch = make_train_batch(sequences, chunk_users, model->options().maxlen);
      auto inputs = long_tensor(batch.inputs, {batch.rows, batch.length}, device);
      // The positions with a target, found on the host (nonzero() on the device would wait for it).
      const std::vector<int64_t> target_positions = nonzero_positions(batch.targets);
      auto positions = long_tensor(target_positions, {static_cast<int64_t>(target_positions.size())}, device);
      auto all_targets = long_tensor(batch.targets, {batch.rows * batch.length}, device);
      auto targets = all_targets.index_select(0, positions);
      torch::Tensor loss;
      {
        const Autocast autocast(device, bf16);  // train.precision=bf16: the forward and the loss
        auto hidden = model->forward(inputs).reshape({batch.rows * batch.length, -1}).index_select(0, positions);
        if (teacher) {
          torch::Tensor teacher_hidden;
          {
            torch::NoGradGuard no_grad;
            teacher_hidden = teacher->forward(inputs).reshape({batch.rows * batch.length, -1}).index_select(0, positions);
          }
          SampledCandidates candidates;
          if (sampled) candidates = {sampler.sample(negatives, device), log_q};
          loss = distillation_loss(distill, model, teacher, hidden, teacher_hidden, targets, log.num_items() + 1,
                                   sampled ? &candidates : nullptr, chunk);
        } else if (sampled) {
          const auto drawn = sampler.sample(negatives, device);
          loss = sampled_softmax_cross_entropy(hidden, model->lookup_items(targets), model->lookup_items(drawn), targets,
                                               drawn, log_q);
        } else {
          const auto excluded = exclude_seen ? earlier_items(inputs, all_targets, positions) : torch::Tensor();
          loss = shards ? shards->full_softmax_loss(hidden, targets, chunk)  // the table never whole
                        : full_softmax_cross_entropy(hidden, model->item_table(), targets, chunk, excluded);
        }
      }
      // Each rank's loss is its share of the global batch's mean: its mean times its share of the
      // positions, so the gradients summed over ranks are those of the whole batch.
      const bool shared = group && !local_sgd;
      const double share = shared ? static_cast<double>(target_positions.size()) / group->sum(target_positions.size()) : 1.0;
      learner.step(shared ? loss * share : loss, rate);
      if (plan) plan->restore();
      ++step, ++taken;
      if (averager && averager->after_step(/*trained=*/true, b + 1 == batches, step)) after_round();
      loss_sum += loss.detach();
      if (shared) shared_sum += loss.detach() * share;
      if (progress.due(b + 1)) progress.log(b + 1, loss_sum.item<double>() / std::max<int64_t>(taken, 1));
    }
    const double local_loss_sum = loss_sum.item<double>();  // waits for the epoch's last step
    summary.step_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - loop_started).count();
    summary.steps += batches;
    if (group) {
      summary.step_collective_seconds += group->collective_seconds() - collectives_before;
      summary.step_allreduce_bytes += group->allreduce_bytes() - bytes_before;
      summary.step_all_to_all_bytes += group->all_to_all_bytes() - exchanged_before;
    }
    // The epoch's mean loss: of the global batches (data-parallel), of every rank's steps (local SGD).
    double train_loss = local_loss_sum / std::max<int64_t>(batches, 1);
    if (group && !local_sgd) train_loss = group->sum(shared_sum.item<double>()) / batches;
    if (local_sgd) {
      const auto totals = group->sum(std::vector<double>{local_loss_sum, static_cast<double>(taken)});
      train_loss = totals[0] / std::max(totals[1], 1.0);
    }
    const RankingMetrics validation = whole(evaluate_model(model, sequences, Split::Validation, eval_options, device));
    const double ndcg = validation.ndcg(10);
    const bool improved = ndcg > best_ndcg;
    if (improved) {
      best_ndcg = ndcg, summary.best_epoch = epoch, stale = 0;
      summary.best_validation = validation;
    } else {
      ++stale;
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    spdlog::info("epoch {} loss {:.4f} validation HR@10 {:.4f} NDCG@10 {:.4f}{} ({:.0f}s)", epoch, train_loss,
                 validation.hit_rate(10), ndcg, improved ? " best" : "", seconds);
    if (writer)
      history << nlohmann::json{{"epoch", epoch}, {"step", step}, {"loss", train_loss}, {"seconds", seconds},
                                {"validation", nlohmann::json::parse(validation.to_json())}}.dump()
              << "\n" << std::flush;
    if (writer && !history) throw std::runtime_error((out_dir / "history.jsonl").string() + ": cannot write: " + std::strerror(errno));
    info.meta = {{"kind", teacher ? "distill" : from ? "finetune" : "train"},
                 {"teacher", teacher_path},
                 {"finetune_from", from ? from->path : ""},
                 {"epoch", epoch},
                 {"step", step},
                 {"best_validation_ndcg10", best_ndcg},
                 {"best_epoch", summary.best_epoch},
                 {"stale_epochs", stale},
                 {"lr_scale", lr_scale},
                 {"lr_decays_done", decays_done},
                 {"validation", nlohmann::json::parse(validation.to_json())},
                 {"torch_version", TORCH_VERSION}};
    if (improved) summary.best_checkpoint = (out_dir / "best.pt").string();
    if (shards) shards->gather_whole();  // rank 0 writes the whole table, as one process does
    if (writer) {  // every rank holds the same weights; rank 0 saves them, the others read them back
      if (trained_only && base.is_null()) base = write_base_checkpoint((out_dir / "base.pt").string(), model, info);
      if (!base.is_null()) info.meta["base"] = base;
      if (improved) save_checkpoint(summary.best_checkpoint, model, &optimizer, info, sparse_state);
      save_checkpoint(summary.last_checkpoint, model, &optimizer, info, sparse_state);
    }
    if (shards) shards->keep_own_rows();
    if (group) group->barrier();
    summary.epochs_run = epoch;
  }
  summary.early_stopped = epoch <= epochs;
  summary.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  if (summary.best_epoch == 0) throw std::runtime_error("no epoch was trained (train.epochs reached already?)");

  // Test the best model, beside the popularity baseline.
  load_checkpoint_weights(summary.best_checkpoint, model);
  if (shards) shards->keep_own_rows();
  summary.test = whole(evaluate_model(model, sequences, Split::Test, eval_options, device));
  summary.popularity_test = whole(evaluate_popularity(sequences, Split::Test, eval_options));
  if (summary.best_validation.count() == 0)  // resumed after the best epoch: re-measure it
    summary.best_validation = whole(evaluate_model(model, sequences, Split::Validation, eval_options, device));
  if (writer)
    write_file_atomically((out_dir / "test.json").string(),
                        nlohmann::json{{"best_epoch", summary.best_epoch},
                                       {"epochs_run", summary.epochs_run},
                                       {"early_stopped", summary.early_stopped},
                                       {"seconds", summary.seconds},
                                       {"parameters", summary.parameters},
                                       {"trained_parameters", summary.trained_parameters},
                                       {"steps", summary.steps},
                                       {"step_seconds", summary.step_seconds},
                                       {"world_size", summary.world_size},
                                       {"step_collective_seconds", summary.step_collective_seconds},
                                       {"step_allreduce_bytes", summary.step_allreduce_bytes},
                                       {"step_all_to_all_bytes", summary.step_all_to_all_bytes},
                                       {"allreduce_buckets", learner.reducer() ? learner.reducer()->buckets() : 0},
                                       {"buckets_started_in_backward",
                                        learner.reducer() ? learner.reducer()->started_in_backward() : 0},
                                       {"item_table_bytes_per_rank",  // weights and both Adam moments
                                        shards ? shards->bytes()
                                               : 3 * model->item_embedding().numel() *
                                                     static_cast<int64_t>(model->item_embedding().element_size())},
                                       {"device", device.str()},
                                       {"validation", nlohmann::json::parse(summary.best_validation.to_json())},
                                       {"test", nlohmann::json::parse(summary.test.to_json())},
                                       {"popularity_test", nlohmann::json::parse(summary.popularity_test.to_json())}}
                                .dump(2) + "\n");
  return summary;
}

}  // namespace freshrec
