// Files under failure: a disk that fills (here a file-size limit, which fails write(2) the same way)
// during a training save, an export or a stream checkpoint must give a clear error naming the file,
// leave no temporary file and keep the previous file, never abort the process; a corrupt or cut
// checkpoint is refused on load; a model with non-finite weights is never exported or published.
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "engine/checkpoint/checkpoint.h"
#include "engine/config/config.h"
#include "engine/export/publisher.h"
#include "engine/export/torchscript.h"
#include "engine/io/remove_tree.h"

namespace fs = std::filesystem;
using namespace freshrec;

namespace {

struct Outcome {
  bool exited = false;  // ended by exit(), not by a signal
  int code = -1;
  int signal = 0;
  std::string output;  // stdout and stderr
};

// Runs the freshrec program with its files limited to `max_file_bytes` (0: no limit).
Outcome run_limited(const std::vector<std::string>& args, rlim_t max_file_bytes, const std::string& log) {
  const pid_t pid = fork();
  if (pid == 0) {
    if (max_file_bytes > 0) {
      signal(SIGXFSZ, SIG_IGN);  // a write past the limit then fails with EFBIG, as a full disk fails with ENOSPC
      rlimit limit{max_file_bytes, max_file_bytes};
      if (setrlimit(RLIMIT_FSIZE, &limit) != 0) _exit(125);
    }
    if (!freopen(log.c_str(), "w", stdout) || dup2(fileno(stdout), STDERR_FILENO) < 0) _exit(126);
    std::vector<char*> argv{const_cast<char*>(FRESHREC_BINARY)};
    for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(FRESHREC_BINARY, argv.data());
    _exit(127);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  Outcome o;
  o.exited = WIFEXITED(status);
  o.code = o.exited ? WEXITSTATUS(status) : -1;
  o.signal = WIFSIGNALED(status) ? WTERMSIG(status) : 0;
  std::ifstream in(log);
  std::stringstream text;
  text << in.rdbuf();
  o.output = text.str();
  return o;
}

std::vector<std::string> temporaries(const fs::path& dir) {
  std::vector<std::string> found;
  for (const auto& entry : fs::recursive_directory_iterator(dir))
    if (entry.path().filename().string().find(".tmp.") != std::string::npos) found.push_back(entry.path().string());
  return found;
}

}  // namespace

TEST(DurableWrites, AFullDiskStopsEveryJobWithAClearErrorAndKeepsThePreviousFiles) {
  const fs::path dir = fs::temp_directory_path() / ("freshrec-full-disk-" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  const std::vector<std::string> small = {"data.format=generated", "generator.users=200", "generator.items=120",
                                          "generator.events_per_user=15", "model.hidden=32", "model.maxlen=20",
                                          "train.epochs=1", "train.threads=1", "stream.pretrain_fraction=0.6"};
  auto with = [&](std::vector<std::string> args) {
    args.insert(args.end(), small.begin(), small.end());
    return args;
  };
  const std::string out = (dir / "train").string();
  const Outcome good = run_limited(with({"train", "train.output_dir=" + out}), 0, (dir / "good.log").string());
  ASSERT_TRUE(good.exited && good.code == 0) << good.output;
  const auto best_size = fs::file_size(out + "/best.pt");
  ASSERT_GT(best_size, 64u * 1024) << "the model must be larger than the limit below";

  // Training again into the same folder: best.pt cannot be rewritten.
  const Outcome train = run_limited(with({"train", "train.output_dir=" + out}), 64 * 1024, (dir / "train.log").string());
  EXPECT_TRUE(train.exited) << "killed by signal " << train.signal << ":\n" << train.output;
  EXPECT_EQ(train.code, 1) << train.output;
  EXPECT_NE(train.output.find("best.pt: cannot write: File too large"), std::string::npos) << train.output;
  EXPECT_EQ(fs::file_size(out + "/best.pt"), best_size);  // the previous file is intact

  const Outcome exported = run_limited({"export", "--checkpoint", out + "/best.pt", "--out", (dir / "model.pt").string()},
                                       64 * 1024, (dir / "export.log").string());
  EXPECT_TRUE(exported.exited && exported.code == 1) << exported.output;
  EXPECT_NE(exported.output.find("model.pt: cannot write"), std::string::npos) << exported.output;
  EXPECT_FALSE(fs::exists(dir / "model.pt"));

  const Outcome stream = run_limited(with({"stream", "--teacher", out + "/best.pt", "stream.output_dir=" + (dir / "s").string()}),
                                     64 * 1024, (dir / "stream.log").string());
  EXPECT_TRUE(stream.exited && stream.code == 1) << stream.output;
  EXPECT_NE(stream.output.find("stream.pt: cannot write"), std::string::npos) << stream.output;
  EXPECT_TRUE(temporaries(dir).empty()) << temporaries(dir).front();
  remove_tree(dir);
}

namespace {

SASRec small_model(int64_t items) {
  torch::manual_seed(5);
  SASRecOptions o;
  o.num_items = items, o.hidden = 16, o.blocks = 1, o.heads = 1, o.maxlen = 8;
  SASRec model(o);
  model->eval();
  return model;
}

IdMap items_of(int64_t n) {
  IdMap items(1);
  for (int64_t i = 1; i <= n; ++i) items.intern(std::to_string(i));
  return items;
}

std::string bytes_of(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

}  // namespace

TEST(Checkpoints, CorruptOrCutFilesAreRefusedOnLoad) {
  const fs::path dir = fs::temp_directory_path() / ("freshrec-corrupt-" + std::to_string(::getpid()));
  remove_tree(dir);
  fs::create_directories(dir);
  SASRec model = small_model(2000);  // the item table is most of the file
  CheckpointInfo info;
  info.config_yaml = Config().to_yaml();
  info.items = items_of(2000);
  const std::string good = (dir / "good.pt").string();
  save_checkpoint(good, model, nullptr, info);
  EXPECT_EQ(read_checkpoint_info(good).items.size(), 2000u);
  const std::string bytes = bytes_of(good);

  std::string flipped = bytes;  // one bit in the middle of the file: inside the item table's data
  flipped[bytes.size() / 2] = static_cast<char>(flipped[bytes.size() / 2] ^ 0x10);
  std::ofstream((dir / "flipped.pt").string(), std::ios::binary) << flipped;
  std::ofstream((dir / "cut.pt").string(), std::ios::binary) << bytes.substr(0, bytes.size() * 3 / 4);
  for (const char* name : {"flipped.pt", "cut.pt"}) {
    const std::string path = (dir / name).string();
    std::string error;
    try {
      SASRec loaded = small_model(2000);
      read_checkpoint_info(path);
      load_checkpoint_weights(path, loaded);
    } catch (const std::exception& e) {
      error = e.what();
    }
    EXPECT_NE(error.find(path + ": corrupt or incomplete archive"), std::string::npos) << name << ": " << error;
  }
  EXPECT_NE([&] {
    try {
      load_torchscript((dir / "flipped.pt").string());
    } catch (const std::exception& e) {
      return std::string(e.what());
    }
    return std::string();
  }().find("corrupt or incomplete archive"), std::string::npos);
  remove_tree(dir);
}

TEST(Checkpoints, NonFiniteWeightsAreNeverExportedOrPublished) {
  const fs::path dir = fs::temp_directory_path() / ("freshrec-nonfinite-" + std::to_string(::getpid()));
  remove_tree(dir);
  SASRec model = small_model(64);
  const IdMap items = items_of(50);  // rows 51..64 are spare: never exported, so they may hold anything
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["item_embedding"][60].fill_(std::numeric_limits<float>::quiet_NaN());
  }
  EXPECT_NO_THROW(export_torchscript(model, items, "", {}));
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["blocks.0.ffn_in.weight"][0][0] = std::numeric_limits<float>::infinity();
  }
  std::string error;
  try {
    export_torchscript(model, items, "", {});
  } catch (const std::exception& e) {
    error = e.what();
  }
  EXPECT_NE(error.find("parameter 'blocks.0.ffn_in.weight' holds non-finite values"), std::string::npos) << error;
  Publisher publisher(dir.string());
  EXPECT_THROW(publisher.publish(model, items, "", {}), std::invalid_argument);
  EXPECT_EQ(publisher.last_version(), 0);
  EXPECT_TRUE(fs::is_empty(dir)) << "nothing may be written";
  remove_tree(dir);
}
