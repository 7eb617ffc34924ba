// The stream's test-then-train step; see stream_step.h.
#include "engine/stream/stream_step.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <utility>

#include "engine/eval/evaluator.h"
#include "engine/runtime.h"
#include "engine/stream/stopwatch.h"
#include "engine/train/losses.h"

namespace freshrec {
namespace {

// The ranks of a batch's targets from its rows' last hidden states (detached, scored in fp32).
torch::Tensor ranks_from(const SASRec& model, const torch::Tensor& hidden, const StepInputs& in, int64_t known) {
  torch::NoGradGuard no_grad;
  return rank_targets(model->score_all(hidden.detach().to(torch::kFloat)), in.targets, in.excluded, known);
}

}  // namespace

StreamStep::StreamStep(StreamModels models, const StreamSettings& settings, const Config& config, torch::Device device,
                       bool bf16)
    : models_(std::move(models)), settings_(settings), device_(device), bf16_(bf16) {
  if (models_.student) distill_ = DistillOptions::from_config(config);
}

bool StreamStep::fused() const {
  const auto no_dropout = [](const SASRec& m) { return m->options().dropout == 0.0; };
  return no_dropout(models_.teacher.model) && (!models_.student || no_dropout(models_.student.model)) &&
         !settings_.all_positions && settings_.replay_share == 0;
}

BatchRanks StreamStep::score(const StepInputs& in, int64_t known) {
  torch::NoGradGuard no_grad;
  auto& model = models_.teacher.model;
  model->eval();
  // Under bf16 the forward runs in autocast and the scores in fp32: bf16 scores would tie.
  auto last_hidden = [&](SASRec& m, const torch::Tensor& inputs) {
    const Autocast autocast(device_, bf16_);
    return m->last_hidden(inputs);
  };
  BatchRanks ranks;
  ranks.teacher = ranks_from(model, last_hidden(model, in.inputs), in, known);
  if (models_.student) {
    auto& student = models_.student.model;
    student->eval();
    ranks.student =
        ranks_from(student, last_hidden(student, newest_columns(in.inputs, student->options().maxlen)), in, known);
  }
  return ranks;
}

void StreamStep::set_process_group(ProcessGroup* group, int64_t bucket_bytes) {
  group_ = group;
  models_.teacher.set_process_group(group, bucket_bytes, /*replicate_rows=*/true);
  if (models_.student) models_.student.set_process_group(group, bucket_bytes, /*replicate_rows=*/true);
}

namespace {

// A loss of zero over a learner's dense weights: the step of a rank with no example, whose gradients
// count zero in the sums (the item rows get none).
torch::Tensor zero_loss(Learner& learner) {
  torch::Tensor zero;
  for (const auto& g : learner.dense->param_groups())
    for (const auto& p : g.params()) zero = zero.defined() ? zero + p.sum() * 0.0 : p.sum() * 0.0;
  return zero;
}

}  // namespace

void StreamStep::grow(int64_t rows) {
  models_.teacher.grow(rows);
  if (models_.student) models_.student.grow(rows);
}

torch::Tensor StreamStep::learn(const std::vector<Example>& batch, const StepInputs& in, BatchRanks* ranked,
                                Context& context) {
  auto& model = models_.teacher.model;
  std::vector<Example> examples;
  std::vector<int64_t> fresh_rows;
  for (size_t r = 0; r < batch.size(); ++r)
    if (batch[r].length > 0) examples.push_back(batch[r]), fresh_rows.push_back(static_cast<int64_t>(r));
  // A row-sharded table's ranks make every lookup and exchange of the step in lockstep, with zero rows
  // where they have no example; the replicated table's ranks take a shorter path then.
  const bool lockstep = models_.teacher.item_shards() != nullptr;
  if (examples.empty() && !lockstep) {
    if (ranked) {
      Stopwatch clock(context.profile.ranking);
      *ranked = score(in, context.known);
    }
    // In a job of several, when another rank has examples this one takes the steps with them (the
    // same collectives, in the same order), its gradients zero.
    if (!group_ || group_->sum(0.0) == 0) return {};
    torch::Tensor skip, student_skip;
    {
      Stopwatch clock(context.profile.update);
      skip = models_.teacher.step(zero_loss(models_.teacher));
    }
    if (models_.student) {
      Stopwatch clock(context.profile.student);
      group_->sum(0.0);
      student_skip = models_.student.step(zero_loss(models_.student));
    }
    const auto zero = torch::zeros({}, skip.options());
    return torch::stack({zero, skip, zero, student_skip.defined() ? student_skip : zero});
  }
  const size_t fresh = examples.size();
  const auto replayed = static_cast<size_t>(std::llround(settings_.replay_share * static_cast<double>(fresh)));
  for (size_t k = 0; k < replayed && !context.reservoir.empty(); ++k) {
    examples.push_back(context.reservoir.draw(context.batch, k));
    ++context.replayed;
  }
  // The step's rows: the batch's own tensors when every event trains, else its training rows,
  // then the replayed examples.
  StepInputs step = in;
  torch::Tensor rows;  // the batch's training rows, when not all of them
  if (fresh < batch.size()) {
    rows = long_tensor(fresh_rows, {static_cast<int64_t>(fresh)}, device_);
    step = {in.inputs.index_select(0, rows), in.targets.index_select(0, rows),
            settings_.exclude_seen ? in.excluded.index_select(0, rows) : torch::Tensor()};
  }
  if (examples.size() > fresh) {
    const std::vector<Example> replay(examples.begin() + static_cast<std::ptrdiff_t>(fresh), examples.end());
    const StepInputs more = make_step_inputs(replay, model->options().maxlen, settings_.exclude_seen, device_);
    torch::Tensor excluded;
    if (settings_.exclude_seen) {
      const int64_t width = std::max(step.excluded.size(1), more.excluded.size(1));
      auto widen = [&](const torch::Tensor& t) { return torch::constant_pad_nd(t, {0, width - t.size(1)}, 0); };
      excluded = torch::cat({widen(step.excluded), widen(more.excluded)});
    }
    step = {torch::cat({step.inputs, more.inputs}), torch::cat({step.targets, more.targets}), excluded};
  }
  if (!settings_.exclude_seen) step.excluded = torch::Tensor();
  torch::manual_seed(settings_.seed * 1000003ULL + context.batch);  // same draws when resumed
  model->train();
  torch::Tensor loss, batch_hidden;
  int64_t loss_rows = 0;  // the rows the loss is the mean of
  {
    Stopwatch clock(context.profile.forward);
    const Autocast autocast(device_, bf16_);  // train.precision=bf16: the forward and the loss
    torch::Tensor hidden, target, excluded;   // excluded: items left out of each row's softmax (exclude_seen)
    if (settings_.all_positions) {
      // The user's recent sequence with the new item appended: every position predicts its next item.
      const AllPositions all = make_all_positions(examples, model->options().maxlen, device_);
      hidden = model->forward(all.inputs)
                   .reshape({all.inputs.size(0) * all.inputs.size(1), model->options().hidden})  // 0 rows too
                   .index_select(0, all.positions);
      target = all.targets.index_select(0, all.positions);
      if (settings_.exclude_seen) excluded = earlier_items(all.inputs, all.targets, all.positions);
    } else {
      target = step.targets;
      excluded = step.excluded;
      if (ranked) {
        batch_hidden = model->last_hidden(in.inputs);  // every row: the ranking reads it
        hidden = rows.defined() ? batch_hidden.index_select(0, rows) : batch_hidden;
      } else {
        hidden = model->last_hidden(step.inputs);
      }
    }
    loss_rows = target.size(0);
    auto negatives = torch::randint(1, context.known, {settings_.negatives}, target.options());
    auto log_q = torch::zeros({model->options().num_items + 1}, hidden.options().dtype(torch::kFloat));  // uniform
    // Full softmax over the known items (the padding row and the rows reserved for items yet to come
    // are not candidates, as in the ranking): the output side gives the table a gradient, which the
    // row-wise optimizer takes as every row touched (a small catalog's table is cheap to update whole;
    // the reserved rows' gradient is zero, so their weights and moments stay as they are).
    if (settings_.full_softmax) {
      loss = full_softmax_cross_entropy(hidden, model->item_embedding().narrow(0, 0, context.known), target,
                                        settings_.ce_chunk, excluded);
    } else {
      const auto sampled = model->lookup_items(negatives);  // the negatives' rows, then the targets' (in
      const auto positives = model->lookup_items(target);   // this order on every rank of a job)
      loss = loss_rows > 0 ? sampled_softmax_cross_entropy(hidden, positives, sampled, target, negatives, log_q)
                           : (hidden.sum() + positives.sum() + sampled.sum()) * 0.0;  // a lockstep rank's nothing
    }
  }
  if (ranked) {
    Stopwatch clock(context.profile.ranking);
    ranked->teacher = ranks_from(model, batch_hidden, in, context.known);  // before the step
  }
  // A job of several: this rank's share of the micro-batch's mean loss (its examples' or positions'
  // share), so the gradients summed over the ranks are those of the whole micro-batch.
  if (group_) {
    const double rows = static_cast<double>(loss_rows), total = group_->sum(rows);
    if (total == 0) return {};  // no rank has an example (lockstep): no step, as one process takes none
    loss = loss * (rows / total);
  }
  // Guard: a bad batch never reaches the weights (decided on the device; the caller counts it).
  torch::Tensor skip, student;
  {
    Stopwatch clock(context.profile.update);
    skip = models_.teacher.step(loss);
  }
  {
    Stopwatch clock(context.profile.student);
    student = models_.student ? learn_student(step, in, rows, ranked, context.known)
                              : torch::stack({torch::full({}, std::numeric_limits<float>::quiet_NaN(), skip.options()),
                                              torch::zeros({}, skip.options())});
  }
  if (settings_.replay_share > 0)
    for (size_t i = 0; i < fresh; ++i)
      context.reservoir.remember(examples[i], model->options().maxlen);  // views into the store, which the caller
                                                                          // settles only after this step
  return torch::cat({torch::stack({loss.detach().to(torch::kFloat), skip}), student});
}

// The student's distillation step on the step's examples (newest position), against the teacher as
// it is after its own step; with `ranked`, its forward covers every row of the batch (`in`; the
// step's are `rows` of it, or all when undefined) and ranks them. Returns (loss, skipped) on the device.
torch::Tensor StreamStep::learn_student(const StepInputs& step, const StepInputs& in, const torch::Tensor& rows,
                                        BatchRanks* ranked, int64_t known) {
  auto& teacher = models_.teacher.model;
  auto& student = models_.student.model;
  const int64_t student_maxlen = student->options().maxlen;
  const auto& inputs = step.inputs;
  const auto& target = step.targets;
  torch::Tensor loss, student_hidden;
  {
    const Autocast autocast(device_, bf16_);  // train.precision=bf16: the forwards and the loss
    torch::Tensor teacher_hidden;
    {
      torch::NoGradGuard no_grad;
      teacher->eval();
      teacher_hidden = teacher->last_hidden(inputs);
    }
    student->train();
    SampledCandidates sampled;
    if (!settings_.full_softmax)
      sampled = {torch::randint(1, known, {settings_.negatives}, target.options()),
                 torch::zeros({student->options().num_items + 1}, teacher_hidden.options().dtype(torch::kFloat))};
    torch::Tensor hidden;
    if (ranked) {
      student_hidden = student->last_hidden(newest_columns(in.inputs, student_maxlen));
      hidden = rows.defined() ? student_hidden.index_select(0, rows) : student_hidden;
    } else {
      hidden = student->last_hidden(newest_columns(inputs, student_maxlen));
    }
    loss = distillation_loss(distill_, student, teacher, hidden, teacher_hidden, target, known,
                             settings_.full_softmax ? nullptr : &sampled, settings_.ce_chunk);
  }
  if (ranked) ranked->student = ranks_from(student, student_hidden, in, known);
  if (group_) {  // this rank's share of the micro-batch's mean, as the teacher's
    const auto rows = static_cast<double>(target.size(0));
    loss = loss * (rows / group_->sum(rows));
  }
  const auto skip = models_.student.step(loss);
  return torch::stack({loss.detach().to(torch::kFloat), skip});
}

}  // namespace freshrec
