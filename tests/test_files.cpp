// Files under failure: a disk that fills (here a file-size limit, which fails write(2) the same way)
// during a training save, an export or a stream checkpoint must give a clear error naming the file,
// leave no temporary file and keep the previous file; never abort the process.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

namespace fs = std::filesystem;

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
  fs::remove_all(dir);
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
  fs::remove_all(dir);
}
