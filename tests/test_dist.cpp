// Jobs of several processes on c10d: real processes on the loopback interface, started by a shell (as
// any launcher sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT) and by torchrun from the
// project's .venv. Gloo on the CPU.
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <nlohmann/json.hpp>
#include <sys/socket.h>
#include <torch/torch.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "engine/checkpoint/checkpoint.h"
#include "engine/config/config.h"
#include "engine/data/readers.h"
#include "engine/stream/sources.h"
#include "models/sasrec.h"
#include "tests/test_support.h"
#ifdef FRESHREC_WITH_KAFKA
#include "tests/mock_kafka.h"
#endif

namespace fs = std::filesystem;
using namespace freshrec;
using freshrec::testing_support::run_command;
using freshrec::testing_support::TempDir;

namespace {

// A port free on the loopback interface now (the kernel's pick).
int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t length = sizeof address;
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0 ||
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    return 29500 + static_cast<int>(::getpid() % 1000);
  ::close(fd);
  return ntohs(address.sin_port);
}

// A small full-softmax training job without dropout: the same global batches give the same gradients
// however the batch is split. The config's overrides alone, then the `train` command writing to `out`
// (overrides given after it win).
const std::string kSmallJob =
    " generator.users=300 generator.items=80 generator.clusters=8 generator.events_per_user=20"
    " model.hidden=16 model.blocks=1 model.maxlen=12 model.dropout=0 train.batch_size=64"
    " train.epochs=2 train.lr=0.003 train.threads=1 train.device=cpu train.log_every_seconds=1000"
    " dist.timeout_seconds=60";

std::string train_args(const std::string& out) { return " train" + kSmallJob + " train.output_dir=" + out; }

// Two ranks on this machine, started as a launcher would; the exit status is 0 when both ended well.
std::pair<int, std::string> two_ranks(const std::string& args, const std::string& logs) {
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port());
  const std::string bin = FRESHREC_BINARY;
  return run_command("RANK=0 LOCAL_RANK=0 " + env + " " + bin + args + " >" + logs + "/rank0.log 2>&1 & p0=$!; " +
                     "RANK=1 LOCAL_RANK=1 " + env + " " + bin + args + " >" + logs + "/rank1.log 2>&1 & p1=$!; " +
                     "wait $p0; a=$?; wait $p1; b=$?; cat " + logs + "/rank0.log " + logs + "/rank1.log; exit $((a | b))");
}

// The largest difference between the two checkpoints' parameters, each relative to its largest
// entry. The keys' third of each block's qkv bias is left out: its gradient is zero in exact arithmetic
// (the attention's softmax ignores a shift shared by every key), so what it receives is rounding noise,
// which Adam scales up to steps of the learning rate's size in either run; the model's outputs do not
// depend on it.
double largest_relative_difference(const std::string& a_path, const std::string& b_path) {
  SASRec a = load_checkpoint_model(a_path, torch::kCPU), b = load_checkpoint_model(b_path, torch::kCPU);
  const int64_t hidden = a->options().hidden;
  const auto pb = b->named_parameters();
  double worst = 0;
  for (const auto& p : a->named_parameters()) {
    auto x = p.value().detach(), y = pb[p.key()].detach();
    EXPECT_EQ(x.sizes(), y.sizes()) << p.key();
    if (p.key().find("qkv.bias") != std::string::npos) {  // the queries' and the values' thirds
      x = torch::cat({x.narrow(0, 0, hidden), x.narrow(0, 2 * hidden, hidden)});
      y = torch::cat({y.narrow(0, 0, hidden), y.narrow(0, 2 * hidden, hidden)});
    }
    const double scale = std::max(x.abs().max().item<double>(), 1e-12);
    worst = std::max(worst, (x - y).abs().max().item<double>() / scale);
  }
  // And the scores the two models give a few histories.
  torch::NoGradGuard no_grad;
  a->eval(), b->eval();
  const auto histories = torch::randint(1, a->options().num_items + 1, {8, a->options().maxlen}, torch::kLong);
  const auto sa = a->score_all(a->last_hidden(histories)), sb = b->score_all(b->last_hidden(histories));
  worst = std::max(worst, (sa - sb).abs().max().item<double>() / sa.abs().max().item<double>());
  return worst;
}

// Each epoch's training loss in a run's history.jsonl.
std::vector<double> epoch_losses(const fs::path& history) {
  std::ifstream in(history);
  std::vector<double> losses;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) losses.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  return losses;
}

// The same losses within `relative` of the first run's.
void expect_same_losses(const std::string& one, const std::string& two, double relative) {
  const auto a = epoch_losses(fs::path(one) / "history.jsonl"), b = epoch_losses(fs::path(two) / "history.jsonl");
  ASSERT_EQ(a.size(), b.size()) << "one writer: one line per epoch";
  ASSERT_FALSE(a.empty());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_NEAR(b[i], a[i], relative * std::abs(a[i])) << "epoch " << i + 1;
}

// A stream over the small job's generated log (1,500 users, items introduced over time), sampled
// softmax, micro-batches of 32 events, a checkpoint every 320 events: the `stream` command's arguments
// writing to `out` (the teacher given with --teacher, or pre-trained on the log's first 60%).
const std::string kStreamJob =
    " generator.users=1500 generator.items=150 generator.drift=0.02 train.loss=sampled train.negatives=32"
    " stream.pretrain_fraction=0.6 stream.batch_size=32 stream.window=500 stream.grow_chunk=16"
    " stream.max_wait_ms=3600000 stream.checkpoint_every=320";

std::string stream_args(const std::string& out, const std::string& log_level = "warn") {
  return " --log-level " + log_level + " stream" + kSmallJob + kStreamJob + " stream.output_dir=" + out;
}

// The file of `rank` that a distributed stream's manifest in `dir` names.
std::string stream_shard(const std::string& dir, int rank) {
  std::ifstream in(fs::path(dir) / "stream.json");
  const auto manifest = nlohmann::json::parse(in);
  return (fs::path(dir) / manifest.at("shards").at(rank).get<std::string>()).string();
}

// A metrics.jsonl's lines without their wall-clock seconds, and their losses apart.
std::pair<std::vector<nlohmann::json>, std::vector<double>> stream_metrics(const std::string& dir) {
  std::pair<std::vector<nlohmann::json>, std::vector<double>> lines;
  std::ifstream in(fs::path(dir) / "metrics.jsonl");
  for (std::string line; std::getline(in, line);) {
    auto j = nlohmann::json::parse(line);
    j.erase("seconds");
    lines.second.push_back(j.at("loss").get<double>());
    j.erase("loss");
    lines.first.push_back(j);
  }
  return lines;
}

// Every weight of the two checkpoints equal, bit for bit.
void expect_identical_models(const std::string& a_path, const std::string& b_path) {
  SASRec a = load_checkpoint_model(a_path, torch::kCPU), b = load_checkpoint_model(b_path, torch::kCPU);
  const auto pb = b->named_parameters();
  for (const auto& p : a->named_parameters()) EXPECT_TRUE(torch::equal(p.value(), pb[p.key()])) << p.key();
}

// The whole model of a row-sharded stream checkpoint, whose rank files each hold their rows of the item
// table (rank r: ids r, r + N, ...): the dense weights of rank 0's file and every rank's rows.
std::string whole_from_rank_files(const std::string& dir, int ranks, const std::string& out) {
  std::vector<SASRec> parts;
  CheckpointInfo info;
  for (int r = 0; r < ranks; ++r) {
    info = read_checkpoint_info(stream_shard(dir, r));
    EXPECT_EQ(info.meta.at("item_rows").at("rank").get<int>(), r);
    parts.emplace_back(sasrec_options_from_config(info.config(), info.meta.at("item_rows").at("local").get<int64_t>() - 1));
    load_checkpoint_weights(stream_shard(dir, r), parts.back());
  }
  const int64_t rows = info.meta.at("item_rows").at("rows").get<int64_t>();
  SASRec whole(sasrec_options_from_config(info.config(), rows - 1));
  torch::NoGradGuard no_grad;
  auto params = whole->named_parameters();
  for (const auto& p : parts[0]->named_parameters())
    if (p.key() != "item_embedding") params[p.key()].copy_(p.value());
  for (int r = 0; r < ranks; ++r)
    whole->item_embedding().slice(0, r, rows, ranks).copy_(parts[static_cast<size_t>(r)]->item_embedding());
  CheckpointInfo saved;
  saved.config_yaml = info.config_yaml;
  saved.items = info.items;
  save_checkpoint(out, whole, nullptr, saved);
  return out;
}

// Two ranks of the stream job `args` (writing to `out`), started as a launcher would; rank 1 is killed
// with SIGKILL as soon as the job's first checkpoint (its manifest) is written. Returns rank 0's log and
// then "exit A B", the two ranks' exit statuses.
std::pair<int, std::string> stream_with_rank_one_killed(const std::string& args, const std::string& out,
                                                        const std::string& logs) {
  const std::string env = "WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port());
  const std::string bin = FRESHREC_BINARY;
  return run_command(
      "RANK=0 LOCAL_RANK=0 " + env + " " + bin + args + " >" + logs + "/rank0.log 2>&1 & p0=$!; " +
      "RANK=1 LOCAL_RANK=1 " + env + " " + bin + args + " >" + logs + "/rank1.log 2>&1 & p1=$!; " +
      "while [ ! -e " + out + "/continual/stream.json ] && kill -0 $p1 2>/dev/null; do sleep 0.01; done; " +
      "kill -9 $p1; wait $p0; a=$?; wait $p1; b=$?; cat " + logs + "/rank0.log; echo \"exit $a $b\"");
}

// Two ranks' stream run with the teacher of `teacher_run` (a one-process stream run): the job's
// continual folder.
std::string two_rank_stream(const std::string& teacher_run, const std::string& out, const std::string& logs) {
  const auto [code, log] = two_ranks(stream_args(out) + " --teacher " + teacher_run + "/teacher/best.pt", logs);
  EXPECT_EQ(code, 0) << log;
  return out + "/continual";
}

}  // namespace

// A stream of two ranks with an online student: each rank replays the log and learns from its own
// users' events of every micro-batch, the gradients summed (the item rows' gathered), so it takes the
// steps one process takes on the same micro-batches: the same weights (teacher and student) within
// 1e-5 (float sums in another order), the same prequential metrics in every window, the same new
// users, items and cold items. The replicas stay equal bit for bit, and a stream resumes only on as
// many processes as wrote it.
TEST(Distributed, AStreamOfTwoRanksLearnsAsOneProcess) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  const std::string student = " student.hidden=8 student.blocks=1 student.heads=1 stream.publish_every=2000";
  // One process pre-trains the teacher and distils the student, then streams.
  const auto [single_code, single_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(one) + student);
  ASSERT_EQ(single_code, 0) << single_out;
  const auto [code, log] = two_ranks(stream_args(two) + student + " --teacher " + one + "/teacher/best.pt --student " +
                                         one + "/student/best.pt",
                                     dir.path().string());
  ASSERT_EQ(code, 0) << log;
  const std::string job = two + "/continual";
  const auto alone = read_checkpoint_info(one + "/continual/stream.pt");
  const auto shared = read_checkpoint_info(stream_shard(job, 0));
  for (const char* counter : {"events", "scored", "new_users", "new_items", "cold_items", "batches", "source_position",
                              "publications"})
    EXPECT_EQ(shared.meta.at(counter), alone.meta.at(counter)) << counter;
  EXPECT_GT(alone.meta.at("new_items").get<int64_t>(), 0) << "the stream grows the vocabulary";
  EXPECT_GT(alone.meta.at("publications").get<int64_t>(), 1);
  EXPECT_TRUE(fs::exists(job + "/published/manifest.json")) << "rank 0 publishes the student";
  EXPECT_EQ(shared.items.size(), alone.items.size());
  EXPECT_LT(largest_relative_difference(one + "/continual/stream.pt", stream_shard(job, 0)), 1e-5);
  expect_identical_models(stream_shard(job, 0), stream_shard(job, 1));
  // The students too: every weight within 1e-5 of its largest entry, and the ranks' replicas equal.
  ASSERT_TRUE(has_student(alone));
  ASSERT_TRUE(has_student(shared));
  SASRec student_alone = student_model(alone), student_shared = student_model(shared);
  unpack_student(alone, student_alone), unpack_student(shared, student_shared);
  {
    const auto other_info = read_checkpoint_info(stream_shard(job, 1));
    SASRec student_other = student_model(other_info);
    unpack_student(other_info, student_other);
    const auto replica = student_other->named_parameters();
    for (const auto& p : student_shared->named_parameters())
      EXPECT_TRUE(torch::equal(p.value(), replica[p.key()])) << "student " << p.key();
  }
  const auto shared_params = student_shared->named_parameters();
  for (const auto& p : student_alone->named_parameters()) {
    if (p.key().find("qkv.bias") != std::string::npos) continue;  // rounding noise (largest_relative_difference)
    const auto& x = p.value();
    const auto& y = shared_params[p.key()];
    EXPECT_LE((x - y).abs().max().item<double>(), 1e-5 * std::max(x.abs().max().item<double>(), 1e-12)) << p.key();
  }
  // Each rank keeps its own users' histories: together, one process's.
  const auto other = read_checkpoint_info(stream_shard(job, 1));
  EXPECT_GT(shared.users.size(), 0u);
  EXPECT_GT(other.users.size(), 0u);
  EXPECT_EQ(shared.users.size() + other.users.size(), alone.users.size());
  const auto [lines_alone, losses_alone] = stream_metrics(one + "/continual");
  const auto [lines_shared, losses_shared] = stream_metrics(job);
  ASSERT_EQ(lines_shared.size(), lines_alone.size());
  ASSERT_GT(lines_alone.size(), 10u);
  for (size_t i = 0; i < lines_alone.size(); ++i) {
    auto a = lines_alone[i], b = lines_shared[i];
    EXPECT_NEAR(b.at("student_loss").get<double>(), a.at("student_loss").get<double>(),
                1e-5 * std::abs(a.at("student_loss").get<double>()))
        << "metrics line " << i;
    a.erase("student_loss"), b.erase("student_loss");
    EXPECT_EQ(b, a) << "metrics line " << i;
    EXPECT_NEAR(losses_shared[i], losses_alone[i], 1e-5 * std::abs(losses_alone[i])) << "metrics line " << i;
  }
  // Resumed on another number of processes: refused, naming both.
  const auto [alone_code, alone_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(two) + " --resume");
  EXPECT_NE(alone_code, 0);
  EXPECT_NE(alone_out.find("the stream was checkpointed by 2 processes"), std::string::npos) << alone_out;
  const auto [both_code, both_out] = two_ranks(stream_args(one) + " --resume", dir.path().string());
  EXPECT_NE(both_code, 0);
  EXPECT_NE(both_out.find("nothing to resume for a job of 2 processes (stream.pt there was written by one process"),
            std::string::npos)
      << both_out;
  // A fresh start of one process in the job's folder replaces the job's checkpoints, which then
  // resume nothing.
  const auto [fresh_code, fresh_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(two) + student +
                                                   " stream.checkpoint_every=0 --teacher " + one + "/teacher/best.pt --student " +
                                                   one + "/student/best.pt");
  ASSERT_EQ(fresh_code, 0) << fresh_out;
  EXPECT_FALSE(fs::exists(job + "/stream.json"));
  for (const auto& entry : fs::directory_iterator(job))
    EXPECT_EQ(entry.path().filename().string().rfind("stream-v", 0), std::string::npos) << entry.path();
}

// A rank of a stream killed (SIGKILL) after the job's first checkpoint: the other rank stops at its
// next collective with an error naming itself, and the job started again with --resume continues from
// the last complete checkpoint to the model, the metrics and the counters of an uninterrupted run:
// every event applied once.
TEST(Distributed, AStreamResumesAfterARankIsKilled) {
  TempDir dir;
  const std::string teacher = (dir.path() / "teacher").string();
  const auto [teacher_code, teacher_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(teacher));
  ASSERT_EQ(teacher_code, 0) << teacher_out;
  const std::string whole = two_rank_stream(teacher, (dir.path() / "whole").string(), dir.path().string());

  const std::string killed = (dir.path() / "killed").string(), logs = dir.path().string();
  const auto [code, out] =
      stream_with_rank_one_killed(stream_args(killed) + " --teacher " + teacher + "/teacher/best.pt", killed, logs);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("exit 1 137"), std::string::npos) << "rank 0 fails, rank 1 was killed\n" << out;
  EXPECT_NE(out.find("rank 0: a collective of the job failed: another rank stopped"), std::string::npos) << out;
  std::ifstream manifest_in(fs::path(killed) / "continual" / "stream.json");
  const auto manifest = nlohmann::json::parse(manifest_in);
  const auto finished = read_checkpoint_info(stream_shard(whole, 0));
  EXPECT_LT(manifest.at("events").get<uint64_t>(), finished.meta.at("events").get<uint64_t>()) << "killed mid-stream";

  const auto [resumed_code, resumed_out] = two_ranks(stream_args(killed) + " --resume", logs);
  ASSERT_EQ(resumed_code, 0) << resumed_out;
  const std::string job = killed + "/continual";
  const auto resumed = read_checkpoint_info(stream_shard(job, 0));
  for (const char* counter : {"events", "scored", "new_users", "new_items", "batches", "source_position", "version"})
    EXPECT_EQ(resumed.meta.at(counter), finished.meta.at(counter)) << counter;
  for (int rank : {0, 1}) expect_identical_models(stream_shard(whole, rank), stream_shard(job, rank));
  EXPECT_EQ(stream_metrics(job), stream_metrics(whole));
  // Each rank keeps only the files of the manifest's version.
  size_t files = 0;
  for (const auto& entry : fs::directory_iterator(job)) files += entry.path().extension() == ".pt";
  EXPECT_EQ(files, 2u);
}

// A stream of two ranks over a row-sharded item table (dist.item_table=row_sharded): each rank holds
// half the rows, the vocabulary grows by the same rule (new rows drawn whole from the seed, each rank
// keeping its own), and the job takes one process's steps: weights within 1e-5, every metrics line
// equal. Each rank's checkpoint file holds its own rows alone (and is refused as a whole model).
// Killed after its first checkpoint and resumed from those files, the job ends with the uninterrupted
// job's weights and metrics, bit for bit.
TEST(Distributed, ARowShardedStreamLearnsAsOneProcessAndResumes) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), logs = dir.path().string();
  const auto [single_code, single_out] =
      run_command(std::string(FRESHREC_BINARY) + stream_args(one) + " stream.publish_every=2000");
  ASSERT_EQ(single_code, 0) << single_out;
  auto args = [&](const std::string& run) {
    return stream_args((dir.path() / run).string(), "info") + " dist.item_table=row_sharded stream.publish_every=2000";
  };
  const std::string teacher = " --teacher " + one + "/teacher/best.pt";
  const auto [code, out] = two_ranks(args("whole") + teacher, logs);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("item table sharded by rows over 2 processes: this one holds"), std::string::npos) << out;
  const std::string whole = (dir.path() / "whole" / "continual").string();
  const auto alone = read_checkpoint_info(one + "/continual/stream.pt");
  const auto shared = read_checkpoint_info(stream_shard(whole, 0));
  EXPECT_GT(alone.meta.at("new_items").get<int64_t>(), 0) << "the stream grows the sharded table";
  for (const char* counter : {"events", "scored", "new_users", "new_items", "cold_items", "batches"})
    EXPECT_EQ(shared.meta.at(counter), alone.meta.at(counter)) << counter;
  // Rank 0 publishes the teacher, its table gathered whole; every rank counts the publications.
  EXPECT_GT(shared.meta.at("publications").get<int64_t>(), 1);
  EXPECT_EQ(shared.meta.at("publications"), alone.meta.at("publications"));
  EXPECT_EQ(read_checkpoint_info(stream_shard(whole, 1)).meta.at("publications"), shared.meta.at("publications"));
  EXPECT_TRUE(fs::exists(whole + "/published/manifest.json"));
  const int64_t rows = shared.meta.at("item_rows").at("rows").get<int64_t>();
  EXPECT_EQ(shared.meta.at("item_rows").at("local").get<int64_t>(), (rows + 1) / 2);
  EXPECT_EQ(read_checkpoint_info(stream_shard(whole, 1)).meta.at("item_rows").at("local").get<int64_t>(), rows / 2);
  for (int rank : {0, 1}) EXPECT_THROW(load_checkpoint_model(stream_shard(whole, rank), torch::kCPU), std::runtime_error);
  const std::string assembled = whole_from_rank_files(whole, 2, logs + "/whole.pt");
  EXPECT_LT(largest_relative_difference(one + "/continual/stream.pt", assembled), 1e-5);
  const auto [lines_alone, losses_alone] = stream_metrics(one + "/continual");
  const auto [lines_shared, losses_shared] = stream_metrics(whole);
  ASSERT_EQ(lines_shared.size(), lines_alone.size());
  for (size_t i = 0; i < lines_alone.size(); ++i) {
    EXPECT_EQ(lines_shared[i], lines_alone[i]) << "metrics line " << i;
    EXPECT_NEAR(losses_shared[i], losses_alone[i], 1e-5 * std::abs(losses_alone[i])) << "metrics line " << i;
  }

  const std::string killed = (dir.path() / "killed").string();
  const auto [kill_code, kill_out] = stream_with_rank_one_killed(args("killed") + teacher, killed, logs);
  ASSERT_EQ(kill_code, 0) << kill_out;
  EXPECT_NE(kill_out.find("exit 1 137"), std::string::npos) << kill_out;
  const auto [resumed_code, resumed_out] = two_ranks(args("killed") + " --resume", logs);
  ASSERT_EQ(resumed_code, 0) << resumed_out;
  const std::string job = killed + "/continual";
  expect_identical_models(assembled, whole_from_rank_files(job, 2, logs + "/killed.pt"));
  EXPECT_EQ(stream_metrics(job), stream_metrics(whole));
  EXPECT_EQ(read_checkpoint_info(stream_shard(job, 0)).meta.at("events"), shared.meta.at("events"));

  // Micro-batches of 4 events (over the log's last 5%), every position trained: many micro-batches give
  // a rank no example, and it still makes every lookup and exchange of the step, with zero rows.
  const auto [tiny_code, tiny_out] = two_ranks(args("tiny") + teacher +
                                                   " stream.batch_size=4 stream.train_positions=all"
                                                   " stream.pretrain_fraction=0.95 stream.checkpoint_every=0",
                                               logs);
  ASSERT_EQ(tiny_code, 0) << tiny_out;
  const auto tiny = read_checkpoint_info(stream_shard((dir.path() / "tiny" / "continual").string(), 0));
  EXPECT_GT(tiny.meta.at("batches").get<int64_t>(), 100);
  EXPECT_EQ(tiny.meta.at("scored"), tiny.meta.at("events"));
}

// The same through torchrun --max-restarts: torchrun sees the killed worker, stops the other and starts
// the job again, and the restarted ranks resume from the last complete checkpoint by themselves.
TEST(Distributed, TorchrunRestartsAKilledStream) {
  const std::string torchrun = std::string(FRESHREC_SOURCE_DIR) + "/.venv/bin/torchrun";
  if (!fs::exists(torchrun)) GTEST_SKIP() << "no torchrun at " << torchrun << " (tools/quickstart.sh makes the .venv)";
  TempDir dir;
  const std::string teacher = (dir.path() / "teacher").string();
  const auto [teacher_code, teacher_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(teacher));
  ASSERT_EQ(teacher_code, 0) << teacher_out;
  const std::string whole = two_rank_stream(teacher, (dir.path() / "whole").string(), dir.path().string());
  const std::string restarted = (dir.path() / "restarted").string();
  const std::string bin = FRESHREC_BINARY;
  const auto [code, out] = run_command(
      torchrun + " --no-python --standalone --nproc-per-node=2 --max-restarts=1 --monitor-interval=0.2 " + bin +
      stream_args(restarted) + " --teacher " + teacher + "/teacher/best.pt > " + dir.path().string() +
      "/torchrun.log 2>&1 & t=$!; while [ ! -e " + restarted + "/continual/stream.json ] && kill -0 $t 2>/dev/null; " +
      "do sleep 0.01; done; pkill -9 -n -f '^" + bin + " .*" + restarted + "'; wait $t; r=$?; cat " + dir.path().string() +
      "/torchrun.log; exit $r");
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("restart 1 of the job: resuming from"), std::string::npos) << out;
  const std::string job = restarted + "/continual";
  const auto resumed = read_checkpoint_info(stream_shard(job, 0));
  const auto finished = read_checkpoint_info(stream_shard(whole, 0));
  for (const char* counter : {"events", "scored", "new_users", "new_items", "batches", "source_position"})
    EXPECT_EQ(resumed.meta.at(counter), finished.meta.at(counter)) << counter;
  expect_identical_models(stream_shard(whole, 0), stream_shard(job, 0));
  EXPECT_EQ(stream_metrics(job), stream_metrics(whole));
}

#ifdef FRESHREC_WITH_KAFKA
// Two ranks consuming a topic of two partitions, each rank one (a user's events all in one partition,
// as a producer keyed by user puts them): every message is applied once, the replicas stay equal, each
// rank's checkpoint holds its own partition's offset and users; over a row-sharded table the job
// takes the same steps. A rank killed after the job's first
// checkpoint, and the job resumed, ends with the uninterrupted job's model and metrics: each rank's
// micro-batches are its share of events in its partition's order, closed by count (stream.max_wait_ms
// is longer than the run), so the two jobs take the same steps.
TEST(Distributed, KafkaRanksReadTheirPartitionsAndResumeAfterAKill) {
  TempDir dir;
  const std::string teacher = (dir.path() / "teacher").string();
  const auto [teacher_code, teacher_out] = run_command(std::string(FRESHREC_BINARY) + stream_args(teacher));
  ASSERT_EQ(teacher_code, 0) << teacher_out;
  // The stream's messages: the generated log after the teacher's 60%, as CSV lines.
  Config config;
  std::istringstream overrides(kSmallJob + kStreamJob);
  for (std::string token; overrides >> token;) config.apply_override(token);
  const ReplaySource replay = ReplaySource::from_log(load_event_log(config, nullptr), "generator");
  std::vector<std::string> messages;
  for (uint64_t p = replay.quantile_position(0.6); p < replay.records().size(); ++p)
    messages.push_back(replay.records()[p].text);
  ASSERT_GT(messages.size(), 5000u);
  testing_support::MockKafka kafka(1);
  kafka.create_topic("events", 2);
  kafka.produce("events", messages, 0, std::string::npos, [&](size_t i) {
    const std::string& m = messages[i];
    return static_cast<int32_t>(std::hash<std::string>{}(m.substr(0, m.find(','))) % 2);
  });
  auto args = [&](const std::string& run) {
    return stream_args((dir.path() / run).string()) + " stream.source=kafka stream.line_format=csv" +
           " stream.kafka.brokers=" + kafka.bootstraps() + " stream.kafka.topic=events stream.kafka.group=" + run +
           " stream.kafka.idle_exit_ms=4000 stream.max_wait_ms=20000";  // a loaded machine's fetch pauses end no rank
  };
  const std::string logs = dir.path().string();
  const auto [whole_code, whole_out] = two_ranks(args("whole") + " --teacher " + teacher + "/teacher/best.pt", logs);
  ASSERT_EQ(whole_code, 0) << whole_out;
  const std::string whole = (dir.path() / "whole" / "continual").string();
  const auto finished = read_checkpoint_info(stream_shard(whole, 0)), other = read_checkpoint_info(stream_shard(whole, 1));
  EXPECT_EQ(finished.meta.at("events").get<size_t>(), messages.size());  // none lost, none twice
  EXPECT_EQ(finished.meta.at("scored").get<size_t>(), messages.size());
  EXPECT_GT(finished.meta.at("new_items").get<size_t>(), 0u);
  expect_identical_models(stream_shard(whole, 0), stream_shard(whole, 1));
  // Each rank read its partition to the end, and holds the histories of the users it read.
  const auto p0 = nlohmann::json::parse(finished.meta.at("source_position").get<std::string>()).at("events");
  const auto p1 = nlohmann::json::parse(other.meta.at("source_position").get<std::string>()).at("events");
  ASSERT_EQ(p0.size(), 1u);
  ASSERT_EQ(p1.size(), 1u);
  EXPECT_EQ(p0.at("0").get<size_t>() + p1.at("1").get<size_t>(), messages.size());
  EXPECT_EQ(finished.tensors.at("history_lengths").sum().item<int64_t>() +
                other.tensors.at("history_lengths").sum().item<int64_t>(),
            static_cast<int64_t>(messages.size()));

  // The same job over a row-sharded table: the same micro-batches, so the same steps (within 1e-5).
  const auto [sharded_code, sharded_out] =
      two_ranks(args("sharded") + " dist.item_table=row_sharded --teacher " + teacher + "/teacher/best.pt", logs);
  ASSERT_EQ(sharded_code, 0) << sharded_out;
  const std::string sharded = (dir.path() / "sharded" / "continual").string();
  const auto sharded_info = read_checkpoint_info(stream_shard(sharded, 0));
  for (const char* counter : {"events", "scored", "new_users", "new_items", "batches", "source_position"})
    EXPECT_EQ(sharded_info.meta.at(counter), finished.meta.at(counter)) << counter;
  EXPECT_LT(largest_relative_difference(stream_shard(whole, 0), whole_from_rank_files(sharded, 2, logs + "/sharded.pt")),
            1e-5);
  EXPECT_EQ(stream_metrics(sharded).first, stream_metrics(whole).first);

  const std::string killed = (dir.path() / "killed").string();
  const auto [code, out] =
      stream_with_rank_one_killed(args("killed") + " --teacher " + teacher + "/teacher/best.pt", killed, logs);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("exit 1 137"), std::string::npos) << out;
  std::ifstream manifest_in(fs::path(killed) / "continual" / "stream.json");
  EXPECT_LT(nlohmann::json::parse(manifest_in).at("events").get<size_t>(), messages.size()) << "killed mid-stream";
  const auto [resumed_code, resumed_out] = two_ranks(args("killed") + " --resume", logs);
  ASSERT_EQ(resumed_code, 0) << resumed_out;
  const std::string job = killed + "/continual";
  const auto resumed = read_checkpoint_info(stream_shard(job, 0));
  for (const char* counter : {"events", "scored", "new_users", "new_items", "batches", "source_position"})
    EXPECT_EQ(resumed.meta.at(counter), finished.meta.at(counter)) << counter;
  for (int rank : {0, 1}) expect_identical_models(stream_shard(whole, rank), stream_shard(job, rank));
  EXPECT_EQ(stream_metrics(job), stream_metrics(whole));
}
#endif

// Data parallelism: each rank takes half of every global batch, the dense gradients are summed over
// c10d (Gloo) before clipping and Adam, so after the same steps the weights are one process's. Not bit
// for bit: each half's loss is summed in its own order (float addition is not associative).
TEST(Distributed, TwoRanksTrainAsOneProcessOnTheSameGlobalBatches) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  const auto [single_code, single_out] = run_command(std::string(FRESHREC_BINARY) + train_args(one));
  ASSERT_EQ(single_code, 0) << single_out;
  const auto [code, out] = two_ranks(train_args(two), dir.path().string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("[rank 0]"), std::string::npos) << out;
  EXPECT_NE(out.find("data-parallel over 2 processes (gloo)"), std::string::npos) << out;
  EXPECT_EQ(out.find("[rank 1] [info]"), std::string::npos) << "rank 1 logs warnings and errors only\n" << out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5);
  // The epoch losses too: Adam and clipping would hide a gradient off by a common factor, the loss not.
  expect_same_losses(one, two, 1e-5);
  // Each rank evaluated its share of the users; their sums are what one process finds for the same
  // model, and so does `freshrec eval` under the launcher.
  const auto [eval_code, eval_out] = run_command(std::string(FRESHREC_BINARY) + " eval --checkpoint " + two +
                                                 "/best.pt --json " + two + "/alone.json");
  ASSERT_EQ(eval_code, 0) << eval_out;
  const auto [shared_code, shared_out] =
      two_ranks(" eval --checkpoint " + two + "/best.pt --json " + two + "/shared-eval.json", dir.path().string());
  ASSERT_EQ(shared_code, 0) << shared_out;
  std::ifstream trained_in(fs::path(two) / "test.json"), alone_in(fs::path(two) / "alone.json"),
      shared_in(fs::path(two) / "shared-eval.json");
  const auto trained = nlohmann::json::parse(trained_in).at("test"), alone = nlohmann::json::parse(alone_in).at("model"),
             shared = nlohmann::json::parse(shared_in).at("model");
  for (const auto& j : {trained, shared}) {
    EXPECT_EQ(j.at("users"), alone.at("users"));
    for (const char* key : {"HR@10", "NDCG@10", "MRR"})
      EXPECT_NEAR(j.at(key).get<double>(), alone.at(key).get<double>(), 1e-12) << key;
  }
}

// The gradients' sums start while the backward pass runs: with buckets of 1 KB the small model's
// gradients go in many buckets, every one of which starts from a gradient accumulator's hook before
// the backward pass ends (every parameter gets a gradient here), and the job still trains as one process.
TEST(Distributed, GradientsAreSummedWhileTheBackwardPassRuns) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  ASSERT_EQ(run_command(std::string(FRESHREC_BINARY) + train_args(one)).first, 0);
  const auto [code, out] = two_ranks(train_args(two) + " dist.bucket_mb=0.001", dir.path().string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5);
  std::ifstream in(fs::path(two) / "test.json");
  const auto j = nlohmann::json::parse(in);
  const int64_t buckets = j.at("allreduce_buckets").get<int64_t>(), steps = j.at("steps").get<int64_t>();
  EXPECT_GE(buckets, 5) << "parameters of up to a few KB each in buckets of 1 KB";
  EXPECT_EQ(j.at("buckets_started_in_backward").get<int64_t>(), buckets * steps);
}

// Batches of one user: rank 0's share of every batch is empty, it adds zero gradients and a zero
// share of the positions, and the job still trains as one process.
TEST(Distributed, AnEmptyShareAddsNothing) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  const std::string smaller = " generator.users=40 train.batch_size=1 train.epochs=1";
  ASSERT_EQ(run_command(std::string(FRESHREC_BINARY) + train_args(one) + smaller).first, 0);
  const auto [code, out] = two_ranks(train_args(two) + smaller, dir.path().string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5);
  expect_same_losses(one, two, 1e-5);
  // With a row-sharded table the empty share still takes part in every lookup's exchange.
  const std::string rows = smaller + " train.loss=sampled train.negatives=20";
  const std::string one_rows = (dir.path() / "one-rows").string(), two_rows = (dir.path() / "two-rows").string();
  ASSERT_EQ(run_command(std::string(FRESHREC_BINARY) + train_args(one_rows) + rows + " train.sparse_embeddings=true").first, 0);
  const auto [rows_code, rows_out] = two_ranks(train_args(two_rows) + rows + " dist.item_table=row_sharded", dir.path().string());
  ASSERT_EQ(rows_code, 0) << rows_out;
  EXPECT_LT(largest_relative_difference(one_rows + "/last.pt", two_rows + "/last.pt"), 1e-5);
  expect_same_losses(one_rows, two_rows, 1e-5);
}

// The item table sharded by rows (dist.item_table=row_sharded): each rank holds its half of the rows
// and of their Adam moments; lookups fetch rows from their owners and send the gradients back, and
// evaluation scores every item without any rank holding the table. The job trains as one process
// with the whole row-wise table (train.sparse_embeddings) on the same global batches, and its
// checkpoints hold the whole table: one process resumes a run that two started.
TEST(Distributed, ARowShardedTableTrainsAsTheWholeTable) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string(),
                    half = (dir.path() / "half").string();
  const std::string sampled = " train.loss=sampled train.negatives=20";
  const auto [single_code, single_out] =
      run_command(std::string(FRESHREC_BINARY) + train_args(one) + sampled + " train.sparse_embeddings=true");
  ASSERT_EQ(single_code, 0) << single_out;
  const auto [code, out] = two_ranks(train_args(two) + sampled + " dist.item_table=row_sharded", dir.path().string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("item table sharded by rows over 2 processes"), std::string::npos) << out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5);
  expect_same_losses(one, two, 1e-5);

  std::ifstream one_in(fs::path(one) / "test.json"), two_in(fs::path(two) / "test.json");
  const auto single = nlohmann::json::parse(one_in), sharded = nlohmann::json::parse(two_in);
  // Rank 0 holds rows 0, 2, 4, ...: half the table, rounded up, with both moments.
  const int64_t rows = load_checkpoint_model(two + "/last.pt", torch::kCPU)->options().num_items + 1;
  const int64_t row_bytes = 3 * 16 * 4;
  EXPECT_EQ(single.at("item_table_bytes_per_rank").get<int64_t>(), rows * row_bytes);
  EXPECT_EQ(sharded.at("item_table_bytes_per_rank").get<int64_t>(), (rows + 1) / 2 * row_bytes);
  EXPECT_GT(sharded.at("step_all_to_all_bytes").get<int64_t>(), 0);
  EXPECT_EQ(single.at("step_all_to_all_bytes").get<int64_t>(), 0);
  // Ranked against the sharded table, the test users score as one process ranks them with the whole one.
  const auto [eval_code, eval_out] = run_command(std::string(FRESHREC_BINARY) + " eval --checkpoint " + two +
                                                 "/best.pt --json " + two + "/alone.json");
  ASSERT_EQ(eval_code, 0) << eval_out;
  std::ifstream alone_in(fs::path(two) / "alone.json");
  const auto alone = nlohmann::json::parse(alone_in).at("model");
  EXPECT_EQ(sharded.at("test").at("users"), alone.at("users"));
  for (const char* key : {"HR@10", "NDCG@10", "MRR"})
    EXPECT_NEAR(sharded.at("test").at(key).get<double>(), alone.at(key).get<double>(), 1e-12) << key;

  // Two ranks train the first epoch; then one process, and again two ranks, train the second from the
  // first's whole checkpoint (each rank keeps its rows of the table and of the optimizer's state).
  const auto [first_code, first_out] =
      two_ranks(train_args(half) + sampled + " dist.item_table=row_sharded train.epochs=1", dir.path().string());
  ASSERT_EQ(first_code, 0) << first_out;
  const std::string again = (dir.path() / "again").string();
  fs::copy(half, again, fs::copy_options::recursive);
  const auto [resumed_code, resumed_out] = run_command(std::string(FRESHREC_BINARY) + train_args(half) + sampled +
                                                       " train.sparse_embeddings=true --resume " + half + "/last.pt");
  ASSERT_EQ(resumed_code, 0) << resumed_out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", half + "/last.pt"), 1e-5);
  const auto [sharded_code, sharded_out] = two_ranks(
      train_args(again) + sampled + " dist.item_table=row_sharded --resume " + again + "/last.pt", dir.path().string());
  ASSERT_EQ(sharded_code, 0) << sharded_out;
  EXPECT_LT(largest_relative_difference(two + "/last.pt", again + "/last.pt"), 1e-5);
}

// The full softmax over a row-sharded table: no rank gathers the logits or the table; each shard's
// log-sum-exp terms give the loss, and every rank's rows take their gradients where they live. Two
// ranks train as one process whose row-wise table takes the full softmax (every row touched at every
// step): every weight and each epoch's loss within 1e-5, with batches of one user too (an empty share
// on rank 0 at every step).
TEST(Distributed, AFullSoftmaxOverARowShardedTableTrainsAsOneProcess) {
  TempDir dir;
  for (const std::string batch : {"64", "1"}) {
    const std::string one = (dir.path() / ("one" + batch)).string(), two = (dir.path() / ("two" + batch)).string();
    const std::string job = " train.batch_size=" + batch + (batch == "1" ? " train.epochs=1 generator.users=40" : "");
    const auto [single_code, single_out] =
        run_command(std::string(FRESHREC_BINARY) + train_args(one) + job + " train.sparse_embeddings=true");
    ASSERT_EQ(single_code, 0) << single_out;
    const auto [code, out] = two_ranks(train_args(two) + job + " dist.item_table=row_sharded", dir.path().string());
    ASSERT_EQ(code, 0) << out;
    EXPECT_NE(out.find("item table sharded by rows over 2 processes"), std::string::npos) << out;
    EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5) << "batches of " << batch;
    expect_same_losses(one, two, 1e-5);
  }
}

// `freshrec bench dist` runs the job both ways and reports them; each step of the job of two reduces
// every dense gradient (4 bytes a parameter) and the share's count of positions (one double).
TEST(Distributed, BenchDistReportsBothJobs) {
  const std::string torchrun = std::string(FRESHREC_SOURCE_DIR) + "/.venv/bin/torchrun";
  if (!fs::exists(torchrun)) GTEST_SKIP() << "no torchrun at " << torchrun << " (tools/quickstart.sh makes the .venv)";
  TempDir dir;
  const auto [code, out] = run_command(std::string(FRESHREC_BINARY) + " bench dist --torchrun " + torchrun + " --out " +
                                       dir.path().string() + kSmallJob);
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("1 process x 2 threads"), std::string::npos) << out;
  EXPECT_NE(out.find("2 processes x 1 threads"), std::string::npos) << out;
  EXPECT_NE(out.find("step time, 1 process / 2 processes: "), std::string::npos) << out;
  std::ifstream in(dir.path() / "many" / "test.json");
  const auto j = nlohmann::json::parse(in);
  EXPECT_EQ(j.at("world_size").get<int>(), 2);
  const int64_t steps = j.at("steps").get<int64_t>(), parameters = j.at("parameters").get<int64_t>();
  ASSERT_GT(steps, 0);
  EXPECT_EQ(j.at("step_allreduce_bytes").get<int64_t>(), steps * (4 * parameters + 8));
  EXPECT_GT(j.at("step_collective_seconds").get<double>(), 0.0);
}

// Local SGD: each rank trains on its own users and the replicas are averaged every few steps (and at
// each epoch's end): one allreduce of every weight per round, none per step. The averaged model learns.
TEST(Distributed, LocalSgdAveragesTheReplicasInRounds) {
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  const std::string epochs = " train.epochs=10";
  ASSERT_EQ(run_command(std::string(FRESHREC_BINARY) + train_args(one) + epochs).first, 0);
  const auto [code, out] =
      two_ranks(train_args(two) + epochs + " dist.mode=local_sgd dist.local_steps=3", dir.path().string());
  ASSERT_EQ(code, 0) << out;
  EXPECT_NE(out.find("local SGD over 2 processes (gloo)"), std::string::npos) << out;
  std::ifstream in(fs::path(two) / "test.json"), alone_in(fs::path(one) / "test.json");
  const auto j = nlohmann::json::parse(in), alone = nlohmann::json::parse(alone_in);
  const int64_t steps = j.at("steps").get<int64_t>(), parameters = j.at("parameters").get<int64_t>();
  ASSERT_EQ(steps % 10, 0);
  const int64_t rounds = 10 * ((steps / 10 + 2) / 3);  // every 3 steps, and at each epoch's end
  // Each round: every weight's delta and the count of ranks that trained (4 bytes each).
  EXPECT_EQ(j.at("step_allreduce_bytes").get<int64_t>(), rounds * 4 * (parameters + 1));
  const double ndcg = j.at("test").at("NDCG@10").get<double>();
  EXPECT_GT(ndcg, j.at("popularity_test").at("NDCG@10").get<double>());
  EXPECT_GT(ndcg, 0.9 * alone.at("test").at("NDCG@10").get<double>());
}

// DP-FedAvg's mechanism: clipped, noised deltas. The noise is seeded (the same run twice gives the same
// model) and it changes the model.
TEST(Distributed, LocalSgdNoiseIsSeededAndChangesTheModel) {
  TempDir dir;
  const std::string plain = (dir.path() / "plain").string(), a = (dir.path() / "a").string(),
                    b = (dir.path() / "b").string();
  const std::string local = " dist.mode=local_sgd dist.local_steps=4 dist.clip_delta=0.5 dist.noise_seed=5";
  ASSERT_EQ(two_ranks(train_args(plain) + local, dir.path().string()).first, 0);
  ASSERT_EQ(two_ranks(train_args(a) + local + " dist.noise_multiplier=0.1", dir.path().string()).first, 0);
  ASSERT_EQ(two_ranks(train_args(b) + local + " dist.noise_multiplier=0.1", dir.path().string()).first, 0);
  EXPECT_EQ(largest_relative_difference(a + "/last.pt", b + "/last.pt"), 0.0);
  EXPECT_GT(largest_relative_difference(plain + "/last.pt", a + "/last.pt"), 1e-3);
  // Another seed, another model; noise without a clip is refused, in a job of one too.
  const std::string c = (dir.path() / "c").string();
  ASSERT_EQ(two_ranks(train_args(c) + local + " dist.noise_multiplier=0.1 dist.noise_seed=6", dir.path().string()).first, 0);
  EXPECT_GT(largest_relative_difference(a + "/last.pt", c + "/last.pt"), 1e-3);
  const auto [code, out] = run_command(std::string(FRESHREC_BINARY) + train_args((dir.path() / "bad").string()) +
                                       " dist.mode=local_sgd dist.noise_multiplier=1");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("dist.noise_multiplier needs dist.clip_delta > 0"), std::string::npos) << out;
}

// The same job through torchrun (the launcher PyTorch users use), whose agent serves the rendezvous.
TEST(Distributed, TorchrunStartsTheJob) {
  const std::string torchrun = std::string(FRESHREC_SOURCE_DIR) + "/.venv/bin/torchrun";
  if (!fs::exists(torchrun)) GTEST_SKIP() << "no torchrun at " << torchrun << " (tools/quickstart.sh makes the .venv)";
  TempDir dir;
  const std::string one = (dir.path() / "one").string(), two = (dir.path() / "two").string();
  ASSERT_EQ(run_command(std::string(FRESHREC_BINARY) + train_args(one)).first, 0);
  const auto [code, out] = run_command(torchrun + " --no-python --standalone --nproc-per-node=2 " + FRESHREC_BINARY +
                                       train_args(two));
  ASSERT_EQ(code, 0) << out;
  EXPECT_LT(largest_relative_difference(one + "/last.pt", two + "/last.pt"), 1e-5);
}

// A rank whose peers never come fails after dist.timeout_seconds with a message naming itself and the
// store; a job of several refuses the row-wise item table.
TEST(Distributed, ALonelyRankAndTheRowWiseTableAreClearErrors) {
  TempDir dir;
  const std::string env = "RANK=0 WORLD_SIZE=2 MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(free_port()) + " ";
  const std::string bin = FRESHREC_BINARY;
  // `command` fails, and its output says `message`.
  auto expect_refused = [](const std::string& command, const std::string& message) {
    const auto [code, out] = run_command(command);
    EXPECT_NE(code, 0) << command;
    EXPECT_NE(out.find(message), std::string::npos) << out;
  };
  expect_refused(env + bin + train_args((dir.path() / "alone").string()) + " dist.timeout_seconds=2",
                 "rank 0: cannot start the gloo process group (store 127.0.0.1:");
  expect_refused(env + bin + train_args((dir.path() / "rows").string()) + " train.loss=sampled train.sparse_embeddings=true",
                 "train.sparse_embeddings=false");
  expect_refused(env + bin + train_args((dir.path() / "full").string()) +
                     " dist.item_table=row_sharded train.exclude_seen=true",
                 "train.exclude_seen is not supported over a row-sharded item table");
  expect_refused(env + bin + train_args((dir.path() / "sgd").string()) +
                     " dist.item_table=row_sharded train.loss=sampled dist.mode=local_sgd",
                 "dist.item_table=row_sharded needs dist.mode=data_parallel");
  expect_refused("RANK=2 WORLD_SIZE=2 " + bin + train_args((dir.path() / "bad").string()),
                 "RANK='2': expected a whole number from 0 to 1");
  expect_refused(env + bin + train_args((dir.path() / "nccl").string()) + " dist.backend=nccl",
                 "dist.backend=nccl reduces GPU tensors");
  // A stream of several replays a log, from a teacher it is given: told before anything runs.
  expect_refused(env + bin + " stream stream.source=stdin stream.output_dir=" + (dir.path() / "stream").string(),
                 "a stream of several processes (WORLD_SIZE=2) replays a log or consumes Kafka");
  expect_refused(env + bin + " stream stream.output_dir=" + (dir.path() / "stream").string(),
                 "a stream of several processes (WORLD_SIZE=2) needs --teacher CHECKPOINT");
  expect_refused(env + bin + " stream stream.loss=full stream.output_dir=" + (dir.path() / "stream").string(),
                 "needs stream.loss=sampled");
}
