// The one list of configuration keys (name, type, default, what it does) and of their sections.
// A key that is not here is rejected, so this list is also the reference of what can be set:
// `freshrec config --markdown` renders it as docs/CONFIG.md.
#include "engine/config/config.h"

namespace freshrec {

const std::vector<KeySpec>& config_schema() {
  using K = KeyType;
  static const std::vector<KeySpec> schema = {
      // ---- data: where the interaction log comes from ----
      {"data.format", K::Choice, "generated", "reader for data.path",
       {"generated", "sasrec", "movielens-dat", "movielens-csv", "movielens-udata", "recbole", "csv"}},
      {"data.path", K::String, "", "input file (unused when data.format is generated)"},
      {"data.strict", K::Bool, "false", "stop at the first malformed line instead of counting it"},
      {"data.min_rating", K::Float, "0", "drop events whose rating is below this (0 keeps all)", {}, -1000000000000, 1000000000000},
      {"data.csv.delimiter", K::String, ",", "field separator of the csv reader (\"tab\" for a tab)"},
      {"data.csv.header", K::Bool, "true", "the first line names the columns"},
      {"data.csv.user", K::String, "user", "user column: a header name, or a 0-based index"},
      {"data.csv.item", K::String, "item", "item column: a header name, or a 0-based index"},
      {"data.csv.time", K::String, "", "timestamp column (empty: line order)"},
      {"data.csv.rating", K::String, "", "rating column (empty: none)"},

      // ---- generator: the built-in synthetic log with known structure ----
      {"generator.users", K::Int, "1500", "number of users", {}, 1, 100000000},
      {"generator.items", K::Int, "600", "number of items", {}, 1, 100000000},
      {"generator.clusters", K::Int, "12", "item clusters (tastes)", {}, 1, 100000},
      {"generator.events_per_user", K::Int, "40", "mean events per user (geometric-ish spread)", {}, 1, 1000000},
      {"generator.sequential", K::Float, "0.7", "chance that the next item follows the cluster transition of the last one", {}, 0, 1},
      {"generator.popularity_exponent", K::Float, "1.0", "Zipf exponent of item popularity within a cluster", {}, 0, 10},
      {"generator.drift", K::Float, "0.002", "per-event chance that a user's favourite cluster changes", {}, 0, 1},
      {"generator.new_item_fraction", K::Float, "0.2", "share of items that only appear later in time", {}, 0, 0.99},
      {"generator.days", K::Int, "120", "time span of the log in days", {}, 1, 36500},
      {"generator.seed", K::Int, "7", "random seed (the same seed gives the same log)", {}, 0, 4294967295},

      // ---- model: SASRec; teacher and student differ only in these ----
      {"model.hidden", K::Int, "64", "embedding and hidden width", {}, 1, 65536},
      {"model.blocks", K::Int, "2", "self-attention blocks", {}, 1, 256},
      {"model.heads", K::Int, "1", "attention heads (must divide model.hidden)", {}, 1, 1024},
      {"model.ffn_hidden", K::Int, "0", "feed-forward inner width (0: same as model.hidden)", {}, 0, 262144},
      {"model.dropout", K::Float, "0.2", "dropout on embeddings, attention and residual branches", {}, 0, 0.99},
      {"model.maxlen", K::Int, "200", "history length the model sees", {}, 1, 65536},
      {"model.block", K::Choice, "prenorm",
       "self-attention block: prenorm, or original (the SASRec authors' code: residuals through the normalised "
       "stream, ReLU)", {"prenorm", "original"}},

      // ---- train ----
      {"train.loss", K::Choice, "full", "full: softmax over all items; sampled: sampled softmax with log-Q correction",
       {"full", "sampled"}},
      {"train.negatives", K::Int, "256", "negatives per batch for train.loss=sampled", {}, 1, 1000000},
      {"train.negative_sampler", K::Choice, "popularity", "distribution of sampled negatives",
       {"uniform", "popularity"}},
      {"train.sparse_embeddings", K::Bool, "false",
       "update only the touched item-embedding rows with the fused row-wise Adam kernel (with train.loss=full every row is touched at every step)"},
      {"train.sparse_bias_correction", K::Choice, "global",
       "row-wise Adam bias correction: by the global step, or by each row's own update count", {"global", "per_row"}},
      {"train.epochs", K::Int, "200", "maximum epochs", {}, 1, 1000000},
      {"train.batch_size", K::Int, "128", "sequences per step", {}, 1, 1000000},
      {"train.lr", K::Float, "0.001", "Adam learning rate", {}, 0, 10},
      {"train.beta1", K::Float, "0.9", "Adam beta1", {}, 0, 0.999999},
      {"train.beta2", K::Float, "0.98", "Adam beta2", {}, 0, 0.999999999},
      {"train.weight_decay", K::Float, "0", "decoupled weight decay (AdamW); 0: plain Adam", {}, 0, 10},
      {"train.warmup_steps", K::Int, "0", "linear learning-rate warm-up steps", {}, 0, 1000000000},
      {"train.clip_norm", K::Float, "1.0", "gradient clipping by global norm (0: off)", {}, 0, 1000000},
      {"train.patience", K::Int, "20",
       "validations without a better NDCG@10 before a learning-rate decay (train.lr_decays) or the stop", {}, 1, 1000000},
      {"train.lr_decay", K::Float, "1", "on a plateau: back to the best checkpoint, learning rate times this", {}, 1e-06, 1},
      {"train.lr_decays", K::Int, "0", "how many plateau decays before early stopping (0: stop at the first plateau)", {}, 0, 1000},
      {"train.seed", K::Int, "42", "seed of initialisation, shuffling and dropout", {}, 0, 4294967295},
      {"train.device", K::Choice, "auto", "auto: CUDA when a GPU is present, else CPU", {"auto", "cpu", "cuda"}},
      {"train.threads", K::Int, "0", "intra-op CPU threads (0: all cores, or under a launcher their share per process of the machine: cores / LOCAL_WORLD_SIZE)", {}, 0, 4096},
      {"train.precision", K::Choice, "fp32",
       "fp32; tf32: fp32 weights, TF32 matmuls on a GPU; bf16: forward and loss under bfloat16 autocast, fp32 "
       "weights and optimizer state (rankings are scored in fp32)",
       {"fp32", "tf32", "bf16"}},
      {"train.output_dir", K::String, "runs/default", "where checkpoints and metrics go"},
      {"train.log_every_seconds", K::Float, "10", "progress line interval", {}, 0, 1000000},
      {"train.ce_chunk", K::Int, "256", "rows per chunk of the fused full-softmax cross-entropy", {}, 1, 16777216},
      {"train.exclude_seen", K::Bool, "false",
       "leave each target's earlier items (the user's items before it) out of the full-softmax loss, as "
       "eval.filter_seen leaves them out of the ranking: for data without repeats. The full-softmax cross-entropy "
       "only (train.loss=full, and stream.loss=full in the stream); distillation's KL still covers the catalog"},

      // ---- finetune: starting from a model trained elsewhere (`freshrec finetune --from`) ----
      {"finetune.new_items", K::Choice, "mean",
       "rows of items the source does not know: random (the model's own initialisation), mean (the mean of the known rows) or content (the mean row of the known items sharing each of its features, from finetune.item_features)",
       {"random", "mean", "content"}},
      {"finetune.item_features", K::String, "",
       "items' side features for finetune.new_items=content: MovieLens movies.dat or movies.csv (genres), or a CSV of id,Feature|Feature"},
      {"finetune.unmentioned_items", K::Choice, "drop",
       "items the source knows and the new data never mentions: drop them, or keep them in the catalogue (after the new data's own)",
       {"drop", "keep"}},
      {"finetune.train", K::Choice, "all",
       "what is trained besides the item table: all, embeddings (the position table alone), top_blocks (the last finetune.top_blocks blocks and the final norm) or adapters (the LoRA adapters alone: finetune.lora_rank > 0)",
       {"all", "embeddings", "top_blocks", "adapters"}},
      {"finetune.top_blocks", K::Int, "1", "with finetune.train=top_blocks: how many of the last blocks are trained", {}, 1, 256},
      {"finetune.known_rows", K::Choice, "train",
       "the rows of items the source knows: train them, or freeze them at the source's values (new items' rows always learn)",
       {"train", "freeze"}},
      {"finetune.item_lr", K::Float, "0", "learning rate of the item table (0: train.lr)", {}, 0, 10},
      {"finetune.lora_rank", K::Int, "0",
       "LoRA adapters of this rank on each block's qkv, attention_out, ffn_in and ffn_out (0: none); folded into the weights on export",
       {}, 0, 4096},
      {"finetune.lora_alpha", K::Float, "8", "LoRA scale numerator: an adapter adds (lora_alpha / lora_rank) B A x", {}, 1e-06, 1000000},
      {"finetune.lora_dropout", K::Float, "0", "dropout on the adapters' input while training", {}, 0, 0.99},
      {"finetune.checkpoint_weights", K::Choice, "trained",
       "what a fine-tune's checkpoints hold when it freezes weights: the trained weights alone, over the frozen ones written once beside them as base.pt (trained), or every weight (all)",
       {"trained", "all"}},
      {"finetune.item_lora_rank", K::Int, "0",
       "a LoRA adapter of this rank on the item table (0: none): each row reads E[i] + (lora_alpha / rank) A[i] B, so that with finetune.known_rows=freeze the known rows still move, in a shared rank-r subspace; in a fine-tune it learns at finetune.item_lr; export and the stream fold it into the table",
       {}, 0, 4096},

      // ---- distill: a student learning from a frozen teacher (freshrec distill, and stream --student) ----
      {"distill.alpha", K::Float, "0.5", "weight of the true-next-item cross-entropy; 1 - alpha weighs the teacher term", {}, 0, 1},
      {"distill.temperature", K::Float, "2.0", "softmax temperature tau of the teacher term (scaled by tau^2)", {}, 0.01, 100},
      {"distill.top_k", K::Int, "50",
       "with a sampled loss (or distill.soft_targets=top_k): the teacher term covers each row's teacher top-K items (plus the sampled negatives)", {}, 1, 100000},
      {"distill.soft_targets", K::Choice, "catalog",
       "with a full softmax: the teacher term over every item (catalog), or over each row's teacher distill.top_k items alone, both distributions renormalised (top_k)",
       {"catalog", "top_k"}},
      {"distill.ranking_k", K::Int, "0",
       "ranking distillation after Tang & Wang 2018: each row's teacher top-K items as extra positives, -sum_k w_k log sigmoid(student score), position weights w_k proportional to 1/k (0: off)",
       {}, 0, 100000},
      {"distill.ranking_weight", K::Float, "0", "the ranking-distillation term's weight (with distill.ranking_k > 0)", {}, 0, 1000},
      {"distill.init_items", K::Choice, "random",
       "the offline student's item table at the start: its own initialisation (random), or the teacher's rows projected onto their leading right singular vectors, one per student dimension (teacher)",
       {"random", "teacher"}},

      // ---- student: the small model the stream job distils and publishes (when no --student is given) ----
      {"student.hidden", K::Int, "0", "student width (0: no student unless --student names a checkpoint)", {}, 0, 65536},
      {"student.blocks", K::Int, "1", "student self-attention blocks", {}, 1, 256},
      {"student.heads", K::Int, "1", "student attention heads", {}, 1, 1024},
      {"student.maxlen", K::Int, "0", "student history length (0: the teacher's model.maxlen)", {}, 0, 65536},

      // ---- stream: continual updates (test-then-train) ----
      {"stream.source", K::Choice, "replay",
       "replay: the log named by data.* in time order; stdin: one event per line; kafka: a topic",
       {"replay", "stdin", "kafka"}},
      {"stream.line_format", K::Choice, "csv",
       "stdin lines and Kafka messages: csv user,item[,timestamp[,rating]] or json objects", {"csv", "json"}},
      {"stream.kafka.brokers", K::String, "", "bootstrap servers, host:port[,host:port]"},
      {"stream.kafka.topic", K::String, "", "topic to consume"},
      {"stream.kafka.group", K::String, "freshrec", "consumer group id"},
      {"stream.kafka.properties", K::StringMap, "{}",
       "further librdkafka settings, e.g. {security.protocol: SASL_SSL, session.timeout.ms: 10000}; values of names "
       "with password, secret, jaas, key, token or credential are not stored in checkpoints"},
      {"stream.kafka.idle_exit_ms", K::Int, "0", "end the stream after this long without a message (0: never)", {}, 0, 31536000000},
      {"stream.pretrain_fraction", K::Float, "0.8",
       "replay: events before this time quantile pre-train the teacher and fill the histories", {}, 0, 1},
      {"stream.batch_size", K::Int, "256", "events per micro-batch", {}, 1, 1000000},
      {"stream.max_wait_ms", K::Int, "1000", "a micro-batch closes when its oldest event has waited this long", {}, 0, 3600000},
      {"stream.window", K::Int, "2000", "events per rolling-metrics window", {}, 1, 1000000000},
      {"stream.history_keep", K::Int, "0",
       "items kept per user (0: all, else at least model.maxlen): the model reads the newest model.maxlen, and "
       "every kept item is filtered from the ranking of the user's next event", {}, 0, 10000000},
      {"stream.checkpoint_every", K::Int, "20000", "events between checkpoints (0: only at the end)", {}, 0, 1000000000000},
      {"stream.checkpoint_seconds", K::Float, "0", "also checkpoint when this many seconds have passed (0: off)", {}, 0, 10000000},
      {"stream.grow_chunk", K::Int, "1024", "rows the item table grows by when new items arrive", {}, 1, 10000000},
      {"stream.max_loss", K::Float, "50", "a batch whose loss is not finite or above this is skipped", {}, 0, 1e+30},
      {"stream.lr", K::Float, "0.0005", "learning rate of the continual updates (Adam, both optimizers)", {}, 0, 10},
      {"stream.dropout", K::Float, "0",
       "dropout of the continual updates, which learn from each event once (-1: the model's own model.dropout)", {}, -1, 0.99},
      {"stream.loss", K::Choice, "sampled",
       "sampled: sampled softmax, only touched item rows change; full: softmax over all items (small catalogs)",
       {"sampled", "full"}},
      {"stream.train_positions", K::Choice, "newest",
       "newest: learn each event's item from its history; all: also re-learn every position of the user's recent "
       "sequence (more signal per step, more compute)",
       {"newest", "all"}},
      {"stream.update", K::Choice, "all",
       "what the teacher's updates change: all (every weight and the touched item rows) or adapters (its LoRA adapters and the touched item rows; a teacher without adapters gets finetune.lora_rank ones)",
       {"all", "adapters"}},
      {"stream.replay_share", K::Float, "0",
       "past examples replayed per new one in each training step, against forgetting (0: off)", {}, 0, 100},
      {"stream.replay_capacity", K::Int, "4096", "examples kept for replay (reservoir sampling over the stream)", {}, 1, 100000000},
      {"stream.publish_every", K::Int, "0", "publish the student (the teacher without one) every N events (0: off)", {}, 0, 1000000000000},
      {"stream.publish_seconds", K::Float, "0", "also publish when this many seconds have passed (0: off)", {}, 0, 10000000},
      {"stream.publish_keep", K::Int, "5", "published versions kept on disk", {}, 1, 1000000},
      {"stream.publish_dir", K::String, "", "folder of published models and manifest.json (empty: <output_dir>/published)"},
      {"stream.output_dir", K::String, "runs/stream", "stream.pt, metrics.jsonl and dead_letters.jsonl go here"},

      // ---- dist: several processes (torchrun) on c10d ----
      {"dist.backend", K::Choice, "auto",
       "the c10d backend of a job of several processes (WORLD_SIZE > 1): auto (nccl on CUDA, gloo on the CPU), gloo or nccl",
       {"auto", "gloo", "nccl"}},
      {"dist.timeout_seconds", K::Float, "300", "how long a rank waits for the others at the rendezvous and in a collective", {}, 1, 86400},
      {"dist.mode", K::Choice, "data_parallel",
       "data_parallel: every step on the global batch, gradients summed over ranks; local_sgd: each rank trains on its own users and the replicas' weights are averaged every dist.local_steps steps (federated averaging)",
       {"data_parallel", "local_sgd"}},
      {"dist.bucket_mb", K::Float, "25",
       "data_parallel: the gradients are summed in buckets of at most this many MB, each starting while the backward pass still computes the earlier layers",
       {}, 0.001, 1024},
      {"dist.item_table", K::Choice, "replicated",
       "replicated: every rank holds the whole item table; row_sharded: rank r of N holds the rows of ids with id % N == r and their Adam moments (row-wise updates, as train.sparse_embeddings; the full softmax exchanges per-shard log-sum-exp terms instead of logits; needs dist.mode=data_parallel)",
       {"replicated", "row_sharded"}},
      {"dist.local_steps", K::Int, "8", "local_sgd: steps between two averagings of the weights", {}, 1, 1000000},
      {"dist.clip_delta", K::Float, "0", "local_sgd: clip each rank's weight delta of a round to this L2 norm (0: off)", {}, 0, 1000000},
      {"dist.noise_multiplier", K::Float, "0",
       "local_sgd: Gaussian noise of this many times dist.clip_delta added by each rank to each coordinate of its clipped delta before averaging (the local-noise form of DP-FedAvg's mechanism; no privacy accounting; 0: off)",
       {}, 0, 1000},
      {"dist.noise_seed", K::Int, "0",
       "local_sgd: seed of the noise, for reproducible runs (anyone who knows it can remove the noise); 0: the operating system's entropy",
       {}, 0, 4611686018427387904},

      // ---- eval ----
      {"eval.ks", K::IntList, "[1, 5, 10, 20]", "cut-offs for HR@K and NDCG@K", {}, 1, 1000000},
      {"eval.batch_size", K::Int, "256", "users per evaluation batch", {}, 1, 1000000},
      {"eval.filter_seen", K::Bool, "true", "exclude items the user already interacted with from the ranking"},
  };
  return schema;
}

const std::vector<ConfigSection>& config_sections() {
  static const std::vector<ConfigSection> sections = {
      {"data", "data",
       "Where the interaction log comes from: `data.format` picks the reader and `data.path` the file (plain or "
       "gzipped). External ids are mapped to dense ids, and the maps travel in every checkpoint."},
      {"data.csv", "data.csv", "Column layout for `data.format: csv` (any delimiter, columns by header name or 0-based index)."},
      {"generator", "generator",
       "The built-in seeded log (`data.format: generated`): users whose tastes drift across item clusters, and items "
       "that only appear later in time. The same seed gives the same log."},
      {"model", "model", "The SASRec model. A teacher and a student differ only in these keys."},
      {"train", "train",
       "Offline training (`freshrec train`, `freshrec distill`, and the teacher a replayed stream pre-trains): loss, "
       "optimizer, schedule, device and precision."},
      {"finetune", "finetune",
       "Fine-tuning a pre-trained model on new data (`freshrec finetune --from SOURCE`): how the source's item rows meet "
       "the new catalogue and what is trained. The `train.*` keys set the rest. See docs/FINETUNING.md."},
      {"distill", "distill", "The distillation loss of a student learning from a frozen teacher (`freshrec distill`, and the stream's online student)."},
      {"student", "student", "The student that `freshrec stream` distils from its teacher, trains online and publishes (when no `--student` checkpoint is given)."},
      {"stream", "stream",
       "Continual updates (`freshrec stream`): the source, micro-batches, the test-then-train update, checkpoints "
       "and publication. See docs/STREAMING.md."},
      {"stream.kafka", "stream.kafka", "The Kafka source (`stream.source: kafka`), read as a member of a consumer group through librdkafka."},
      {"dist", "dist",
       "Jobs of several processes, started by torchrun (or anything that sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR "
       "and MASTER_PORT) on PyTorch's distributed runtime (c10d). See docs/DISTRIBUTED.md."},
      {"eval", "eval", "Full-ranking evaluation (`freshrec eval`, and validation during training)."},
  };
  return sections;
}

const ConfigSection* config_section_of(const std::string& key) {
  const ConfigSection* best = nullptr;
  for (const auto& section : config_sections())
    if (key.compare(0, section.prefix.size() + 1, section.prefix + ".") == 0 &&
        (!best || section.prefix.size() > best->prefix.size()))
      best = &section;
  return best;
}

}  // namespace freshrec
