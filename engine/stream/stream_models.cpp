// Loading the stream's teacher and student; see stream_models.h.
#include "engine/stream/stream_models.h"

#include <spdlog/spdlog.h>

#include <sstream>
#include <stdexcept>

namespace freshrec {
namespace {

// `model` with its item adapter (a fine-tune's finetune.item_lora_rank) folded into the item table,
// which the stream grows and updates row by row; `config_yaml`, the config saved with the model,
// then says it has none, so that checkpoints and published models rebuild the same shape.
SASRec without_item_adapter(SASRec model, std::string& config_yaml) {
  if (model->options().item_lora_rank == 0) return model;
  Config saved = Config::from_stored_yaml(config_yaml, "checkpoint config", nullptr);
  saved.apply_override("finetune.item_lora_rank=0");
  config_yaml = saved.to_yaml();
  spdlog::info("stream: the item adapter (rank {}) is folded into the item table, whose rows the stream updates",
               model->options().item_lora_rank);
  return fold_item_adapter(model);
}

// The teacher with LoRA adapters of the stream config's finetune.lora_* added (they start at zero,
// so the model's answers do not change); `config_yaml`, the config saved with it, records them, so a
// resume builds the same model.
SASRec with_adapters(SASRec& plain, const Config& config, uint64_t seed, torch::Device device, std::string& config_yaml) {
  auto options = plain->options();
  options.lora_rank = config.get_int("finetune.lora_rank");
  options.lora_alpha = config.get_float("finetune.lora_alpha");
  options.lora_dropout = config.get_float("finetune.lora_dropout");
  if (options.lora_rank == 0)
    throw ConfigError(config.origin("stream.update") + ": stream.update=adapters needs adapters: a teacher fine-tuned "
                      "with them, or finetune.lora_rank > 0 to add them");
  torch::manual_seed(seed * 7919ULL + 17);  // the adapters' A: the same in every run of this config
  SASRec adapted(options);
  {
    torch::NoGradGuard no_grad;
    auto params = adapted->named_parameters();
    for (const auto& p : plain->named_parameters()) params[p.key()].copy_(p.value());
  }
  adapted->to(device);
  Config saved = Config::from_stored_yaml(config_yaml, "checkpoint config", nullptr);
  auto exact = [](double v) {  // 17 significant digits: the same double when read back
    std::ostringstream out;
    out.precision(17);
    out << v;
    return out.str();
  };
  saved.apply_override("finetune.lora_rank=" + std::to_string(options.lora_rank));
  saved.apply_override("finetune.lora_alpha=" + exact(options.lora_alpha));
  saved.apply_override("finetune.lora_dropout=" + exact(options.lora_dropout));
  config_yaml = saved.to_yaml();
  spdlog::info("stream: the teacher's updates change its rank-{} LoRA adapters and the touched item rows alone",
               options.lora_rank);
  return adapted;
}

// The model of a rank's file of a row-sharded stream checkpoint: its table holds that rank's rows
// alone (meta "item_rows"), so no rank builds the whole table to resume.
SASRec rank_rows_model(const std::string& path, const CheckpointInfo& info, torch::Device device) {
  const int64_t local = info.meta.at("item_rows").at("local").get<int64_t>();
  if (local < 1) throw std::runtime_error(path + ": item_rows names " + std::to_string(local) + " rows");
  SASRec model(sasrec_options_from_config(info.config(), local - 1));
  load_checkpoint_weights(path, model);
  model->to(device);
  return model;
}

}  // namespace

StreamModels load_stream_models(const Config& config, const StreamSettings& settings, const StreamRun& run,
                                CheckpointInfo& info, torch::Device device, ProcessGroup* item_shards) {
  const std::string& start = run.resume.empty() ? run.teacher : run.resume;
  if (!run.resume.empty()) {  // the optimizer state saved is that of one update mode
    const std::string saved = info.meta.value("update", "all"), now = settings.adapters_only ? "adapters" : "all";
    if (saved != now)
      throw ConfigError(config.origin("stream.update") + ": " + run.resume + " was written with stream.update=" + saved +
                        ", this run asks for " + now + ": resume with the same, or start a new run from its teacher");
  }
  StreamModels models;
  // A rank's file of a row-sharded stream checkpoint holds this rank's rows of the table.
  const int64_t sharded_rows = info.meta.contains("item_rows") ? info.meta.at("item_rows").at("rows").get<int64_t>() : 0;
  if (sharded_rows > 0 && !item_shards)
    throw ConfigError(start + ": holds one rank's rows of a row-sharded item table: resume it with "
                      "dist.item_table=row_sharded on as many processes");
  SASRec teacher = sharded_rows > 0 ? rank_rows_model(start, info, device)
                                    : without_item_adapter(load_checkpoint_model(start, device), info.config_yaml);
  if (settings.adapters_only && teacher->options().lora_rank == 0)
    teacher = with_adapters(teacher, config, settings.seed, device, info.config_yaml);
  const LearnerSettings& learning = settings.learning;
  models.teacher =
      Learner(teacher, learning, settings.adapters_only ? adapters_only(teacher) : TrainedParameters{}, item_shards,
              sharded_rows);
  if (settings.history_keep > 0 && settings.history_keep < teacher->options().maxlen)
    throw ConfigError(config.origin("stream.history_keep") + ": stream.history_keep (" +
                      std::to_string(settings.history_keep) + ") must be 0 (all) or at least the model's maxlen (" +
                      std::to_string(teacher->options().maxlen) + ")");
  teacher->set_dropout(update_dropout(config, teacher->options().dropout));
  // The student: from the stream checkpoint when resuming, else from --student.
  Learner& student = models.student;
  if (!run.resume.empty() && has_student(info)) {
    models.student_config = student_config_yaml(info);
    student = Learner(student_model(info), learning);
    student.model->to(device);
    unpack_student(info, student.model, student.dense.get(), student.sparse.get());
  } else if (run.resume.empty() && !run.student.empty()) {
    const auto student_info = read_checkpoint_info(run.student);
    if (student_info.items.serialize() != info.items.serialize())
      throw std::runtime_error(run.student + ": the student knows other items than the teacher (" +
                               std::to_string(student_info.items.size()) + " vs " + std::to_string(info.items.size()) +
                               "); distil it from this teacher");
    models.student_config = student_info.config_yaml;
    student = Learner(without_item_adapter(load_checkpoint_model(run.student, device), models.student_config), learning);
    if (student.model->options().maxlen > teacher->options().maxlen)
      throw std::runtime_error(run.student + ": the student's maxlen exceeds the teacher's");
    if (student.model->options().num_items < teacher->options().num_items) {  // the teacher's spare rows
      torch::manual_seed(settings.seed * 7919ULL + static_cast<uint64_t>(teacher->options().num_items));
      student.grow(teacher->options().num_items);
    }
  }
  if (student) student.model->set_dropout(update_dropout(config, student.model->options().dropout));
  if (student && item_shards)
    throw ConfigError(config.origin("dist.item_table") + ": a stream with dist.item_table=row_sharded updates the teacher "
                      "alone (the student would need the whole table): no --student, student.hidden=0");
  return models;
}

}  // namespace freshrec
