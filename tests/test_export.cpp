// Torch tests of the serving side: distillation losses against autograd references, the TorchScript
// export against the in-engine model (parity within 1e-5, ids in and out, errors), and the exported
// file run by a program that links LibTorch alone.
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cstdio>
#include <cstdlib>
#include <functional>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/checkpoint/checkpoint.h"
#include "engine/export/torchscript.h"
#include "engine/io/remove_tree.h"
#include "engine/train/distill.h"
#include "engine/train/losses.h"
#include "models/sasrec.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using namespace freshrec;

namespace {

std::string temp_folder(const std::string& name) {
  const auto p = fs::temp_directory_path() / ("freshrec-export-" + std::to_string(::getpid()) + "-" + name);
  remove_tree(p);
  fs::create_directories(p);
  return p.string();
}

SASRec random_model(int64_t items, int64_t hidden, uint64_t seed, int64_t maxlen = 8, const std::string& block = "prenorm") {
  torch::manual_seed(seed);
  SASRecOptions o;
  o.block = block;
  o.num_items = items;
  o.hidden = hidden;
  o.blocks = 2;
  o.heads = 2;
  o.maxlen = maxlen;
  o.dropout = 0.1;
  SASRec model(o);
  // Non-trivial norms and biases, so the export's use of every parameter is checked.
  torch::NoGradGuard no_grad;
  for (auto& p : model->parameters()) p.add_(torch::randn_like(p) * 0.1);
  model->eval();
  return model;
}

IdMap id_map(int64_t items, const std::string& prefix, int64_t first) {
  IdMap m(1);
  for (int64_t i = 0; i < items; ++i) m.intern(prefix + std::to_string(first + 7 * i));
  return m;
}

// Reference of the distillation loss written with plain autograd ops.
torch::Tensor reference_distillation(const torch::Tensor& h, const torch::Tensor& table, const torch::Tensor& targets,
                                     const torch::Tensor& th, const torch::Tensor& ttable, double alpha, double tau) {
  const auto V = table.size(0);
  auto zs = torch::matmul(h, table.narrow(0, 1, V - 1).t());
  auto zt = torch::matmul(th, ttable.narrow(0, 1, V - 1).t());
  auto ce = torch::nn::functional::cross_entropy(zs, targets - 1);
  auto log_ps = torch::log_softmax(zs / tau, 1), log_pt = torch::log_softmax(zt / tau, 1);
  auto kl = (log_pt.exp() * (log_pt - log_ps)).sum(1).mean();
  return ce * alpha + kl * ((1 - alpha) * tau * tau);
}


// Five random histories of 8 items of 40: the student's last hidden states (training mode, with
// gradient) and the teacher's (without).
std::pair<torch::Tensor, torch::Tensor> student_and_teacher_hidden(SASRec& student, SASRec& teacher) {
  student->train();
  auto items = torch::randint(1, 41, {5, 8}, torch::kLong);
  auto student_hidden = student->last_hidden(items);
  torch::NoGradGuard no_grad;
  return {student_hidden, teacher->last_hidden(items)};
}

}  // namespace

TEST(Distillation, FusedLossAndGradientsMatchAutograd) {
  torch::manual_seed(3);
  const int64_t N = 37, V = 23, C = 8, Ct = 12;
  auto targets = torch::randint(1, V, {N}, torch::kLong);
  auto th = torch::randn({N, Ct}), ttable = torch::randn({V, Ct});
  for (double alpha : {0.0, 0.3, 1.0}) {
    for (double tau : {1.0, 3.0}) {
      auto h1 = torch::randn({N, C}, torch::requires_grad()), t1 = torch::randn({V, C}, torch::requires_grad());
      auto h2 = h1.detach().clone().requires_grad_(), t2 = t1.detach().clone().requires_grad_();
      auto fused = full_softmax_distillation(h1, t1, targets, th, ttable, alpha, tau, /*chunk_rows=*/5);
      auto reference = reference_distillation(h2, t2, targets, th, ttable, alpha, tau);
      fused.backward();
      reference.backward();
      EXPECT_NEAR(fused.item<double>(), reference.item<double>(), 1e-5) << "alpha " << alpha << " tau " << tau;
      EXPECT_TRUE(torch::allclose(h1.grad(), h2.grad(), 1e-5, 1e-6)) << "alpha " << alpha << " tau " << tau;
      EXPECT_TRUE(torch::allclose(t1.grad(), t2.grad(), 1e-5, 1e-6)) << "alpha " << alpha << " tau " << tau;
      EXPECT_EQ(t1.grad()[0].abs().sum().item<double>(), 0.0) << "the padding row got a gradient";
    }
  }
  // alpha = 1 is the plain full-softmax cross-entropy.
  auto h = torch::randn({N, C}), table = torch::randn({V, C});
  EXPECT_NEAR(full_softmax_distillation(h, table, targets, th, ttable, 1.0, 2.0).item<double>(),
              full_softmax_cross_entropy(h, table, targets).item<double>(), 1e-5);
  // A teacher that is the student itself costs nothing beyond the label term.
  EXPECT_NEAR(full_softmax_distillation(h, table, targets, h, table, 0.0, 2.0).item<double>(), 0.0, 1e-6);
}

TEST(Distillation, RejectsMismatchedShapes) {
  auto h = torch::randn({4, 8}), table = torch::randn({10, 8}), targets = torch::ones({4}, torch::kLong);
  EXPECT_THROW(full_softmax_distillation(h, table, targets, torch::randn({4, 6}), torch::randn({11, 6}), 0.5, 2), c10::Error);
  EXPECT_THROW(full_softmax_distillation(h, table, targets, torch::randn({3, 6}), torch::randn({10, 6}), 0.5, 2), c10::Error);
  EXPECT_THROW(full_softmax_distillation(h, table, targets, torch::randn({4, 6}), torch::randn({10, 6}), 0.5, 0), c10::Error);
}

TEST(Distillation, CandidateFormIsTheKlOverTheList) {
  torch::manual_seed(5);
  auto s = torch::randn({6, 9}), t = torch::randn({6, 9});
  const double tau = 1.5;
  auto ps = torch::softmax(s / tau, 1), pt = torch::softmax(t / tau, 1);
  auto expected = (pt * (pt.log() - ps.log())).sum(1).mean() * tau * tau;
  EXPECT_NEAR(candidate_distillation_kl(s, t, tau).item<double>(), expected.item<double>(), 1e-6);
  EXPECT_NEAR(candidate_distillation_kl(t, t, tau).item<double>(), 0.0, 1e-6);

  // Through the models: the sampled form runs, gives finite gradients to the student only.
  SASRec student = random_model(40, 8, 1), teacher = random_model(40, 16, 2);
  const auto [sh, teacher_hidden] = student_and_teacher_hidden(student, teacher);
  auto targets = torch::randint(1, 41, {5}, torch::kLong);
  SampledCandidates sampled{torch::randint(1, 41, {16}, torch::kLong), torch::full({41}, -std::log(40.0))};
  DistillOptions o;
  o.top_k = 7;
  auto loss = distillation_loss(o, student, teacher, sh, teacher_hidden, targets, 41, &sampled, 2);
  loss.backward();
  EXPECT_TRUE(std::isfinite(loss.item<double>()));
  EXPECT_TRUE(student->item_embedding().grad().defined());
  EXPECT_FALSE(teacher->item_embedding().grad().defined());
}

// Ranking distillation against a hand-computed case, and its gradient pushes the teacher's top items up,
// the first the most.
TEST(Distillation, RankingTermIsTheWeightedLogSigmoidOfTheTeachersTopItems) {
  auto scores = torch::tensor({{2.0f, 0.0f, -1.0f}, {0.5f, 0.5f, 0.5f}}).requires_grad_();
  const double h3 = 1.0 + 0.5 + 1.0 / 3;  // w_k = (1/k) / H_3
  auto log_sigmoid = [](double x) { return -std::log1p(std::exp(-x)); };
  const double row0 = -(log_sigmoid(2.0) * 1 + log_sigmoid(0.0) * 0.5 + log_sigmoid(-1.0) / 3) / h3;
  const double row1 = -log_sigmoid(0.5);
  auto loss = ranking_distillation_loss(scores);
  EXPECT_NEAR(loss.item<double>(), (row0 + row1) / 2, 1e-6);
  loss.backward();
  const auto grad = scores.grad();
  EXPECT_LT(grad[1][0].item<double>(), grad[1][1].item<double>());  // equal scores: the first pushed hardest
  EXPECT_LT(grad[1][1].item<double>(), grad[1][2].item<double>());
  EXPECT_LT(grad.max().item<double>(), 0.0);
}

// The full form with soft targets over the teacher's top-K alone is the full-softmax CE plus the KL
// over those K items, renormalised; the ranking term adds to any form; the teacher gets no gradient.
TEST(Distillation, TopKSoftTargetsAndTheRankingTermThroughTheModels) {
  torch::manual_seed(6);
  SASRec student = random_model(40, 8, 1), teacher = random_model(40, 16, 2);
  const auto [sh, th] = student_and_teacher_hidden(student, teacher);
  auto targets = torch::randint(1, 41, {5}, torch::kLong);
  DistillOptions o;
  o.top_k = 7, o.top_k_targets = true, o.alpha = 0.25, o.temperature = 2;
  auto loss = distillation_loss(o, student, teacher, sh, th, targets, 41, nullptr, 2);
  // By hand: the teacher's top 7 of items 1..40 for each row, both score lists over them.
  torch::Tensor expected;
  {
    torch::NoGradGuard no_grad;
    auto teacher_scores = torch::matmul(th, teacher->item_embedding().narrow(0, 1, 40).t());
    auto [top_values, top_index] = teacher_scores.topk(7, 1);
    auto student_scores = torch::matmul(sh, student->item_embedding().narrow(0, 1, 40).t());
    auto top_student = student_scores.gather(1, top_index);
    auto ce = torch::nn::functional::cross_entropy(student_scores, targets - 1);
    auto log_ps = torch::log_softmax(top_student / 2, 1), log_pt = torch::log_softmax(top_values / 2, 1);
    expected = ce * 0.25 + (log_pt.exp() * (log_pt - log_ps)).sum(1).mean() * 4 * 0.75;
    // The ranking term over the teacher's top 3, weighted 0.5.
    auto top3 = top_student.narrow(1, 0, 3);
    DistillOptions ranked = o;
    ranked.ranking_k = 3, ranked.ranking_weight = 0.5;
    EXPECT_NEAR(distillation_loss(ranked, student, teacher, sh, th, targets, 41, nullptr, 2).item<double>(),
                (expected + ranking_distillation_loss(top3) * 0.5).item<double>(), 1e-5);
  }
  EXPECT_NEAR(loss.item<double>(), expected.item<double>(), 1e-5);
  loss.backward();
  EXPECT_TRUE(student->item_embedding().grad().defined());
  EXPECT_FALSE(teacher->item_embedding().grad().defined());
}

// The student's table from the teacher's: the rank-C projection keeps the teacher rows' inner
// products as well as any rank-C map can (the Eckart-Young bound: the discarded singular values), and
// at the teacher's own width it keeps them exactly; the padding row is zero.
TEST(Distillation, TeacherItemsProjectOntoTheirLeadingSingularVectors) {
  torch::manual_seed(7);
  auto table = torch::randn({31, 12});
  const auto projected = project_teacher_items(table, 31, 4);
  ASSERT_EQ(projected.sizes(), torch::IntArrayRef({31, 4}));
  EXPECT_TRUE(torch::equal(projected[0], torch::zeros({4})));
  const auto rows = table.narrow(0, 1, 30).to(torch::kDouble);
  const auto gram = torch::matmul(rows, rows.t());
  const auto kept = projected.narrow(0, 1, 30).to(torch::kDouble);
  const double error = (gram - torch::matmul(kept, kept.t())).norm().item<double>();
  const auto singular = torch::linalg_svdvals(rows);
  const double bound = singular.narrow(0, 4, singular.size(0) - 4).pow(2).norm().item<double>();
  EXPECT_NEAR(error, bound, 1e-3 * bound);
  const auto whole = project_teacher_items(table, 31, 12).narrow(0, 1, 30).to(torch::kDouble);
  EXPECT_LT((gram - torch::matmul(whole, whole.t())).abs().max().item<double>(), 1e-4);
  EXPECT_THROW(project_teacher_items(table, 31, 13), c10::Error);  // a student wider than its teacher
}

TEST(Export, OriginalBlockMatchesTheEngineModel) {
  SASRec model = random_model(30, 16, 12, 8, "original");
  const IdMap items = id_map(30, "", 1000);
  auto loaded = export_torchscript(model, items, "model:\n  block: original\n", {});
  const std::vector<std::vector<int64_t>> rows = {{3, 7, 7, 1}, {0, 0, 0, 5}};  // internal ids
  c10::List<c10::List<int64_t>> histories, candidates;
  for (const auto& h : rows) {
    c10::List<int64_t> history, every;
    for (int64_t i : h)
      if (i) history.push_back(std::stoll(items.external(static_cast<int32_t>(i))));
    for (int32_t i = 1; i <= 30; ++i) every.push_back(std::stoll(items.external(i)));
    histories.push_back(history), candidates.push_back(every);
  }
  auto inputs = torch::tensor({3, 7, 7, 1, 0, 0, 0, 5}, torch::kLong).view({2, 4});
  torch::NoGradGuard no_grad;
  auto engine = model->score_all(model->last_hidden(inputs)).narrow(1, 1, 30);
  auto scored = loaded.get_method("score")({histories, candidates}).toTensor();
  EXPECT_LE((scored - engine).abs().max().item<double>(), 1e-5);
}

TEST(Export, TorchScriptMatchesTheEngineModel) {
  SASRec model = random_model(30, 16, 11);
  const IdMap items = id_map(30, "", 1000);
  auto module = export_torchscript(model, items, "model:\n  hidden: 16\n", {{"version", 3}});
  const std::string path = temp_folder("parity") + "/model.pt";
  save_torchscript(module, path);
  auto loaded = load_torchscript(path);
  EXPECT_EQ(torchscript_meta(loaded).at("version"), 3);

  // Histories of different lengths, one longer than maxlen (only the newest 8 count), one empty.
  const std::vector<std::vector<int32_t>> internal = {{3, 7, 7, 1}, {5}, {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}, {}};
  c10::List<c10::List<int64_t>> histories;
  for (const auto& h : internal) {
    c10::List<int64_t> row;
    for (int32_t i : h) row.push_back(std::stoll(items.external(i)));
    histories.push_back(row);
  }
  // Engine scores, left-padded to the longest (capped) history, as the export pads.
  const int64_t T = 8;
  auto inputs = torch::zeros({4, T}, torch::kLong);
  for (size_t r = 0; r < internal.size(); ++r) {
    const auto& h = internal[r];
    const size_t n = std::min<size_t>(h.size(), T);
    for (size_t k = 0; k < n; ++k) inputs[r][T - n + k] = h[h.size() - n + k];
  }
  torch::Tensor engine;
  {
    torch::NoGradGuard no_grad;
    engine = model->score_all(model->last_hidden(inputs));  // (4, 31)
  }
  // score(): every item as a candidate.
  c10::List<c10::List<int64_t>> candidates;
  for (size_t r = 0; r < internal.size(); ++r) {
    c10::List<int64_t> row;
    for (int32_t i = 1; i <= 30; ++i) row.push_back(std::stoll(items.external(i)));
    candidates.push_back(row);
  }
  auto scored = loaded.get_method("score")({histories, candidates}).toTensor();
  EXPECT_LE((scored - engine.narrow(1, 1, 30)).abs().max().item<double>(), 1e-5);

  // recommend(): the top 5 of the engine's scores with seen items and padding excluded, as external ids.
  auto out = loaded.get_method("recommend")({histories, int64_t{5}}).toTuple();
  auto ids = out->elements()[0].toTensor(), top_scores = out->elements()[1].toTensor();
  auto filtered = engine.clone();
  filtered.select(1, 0).fill_(-INFINITY);
  for (size_t r = 0; r < internal.size(); ++r)
    for (int32_t i : internal[r]) filtered[r][i] = -INFINITY;
  auto expected = filtered.topk(5, 1);
  EXPECT_LE((top_scores - std::get<0>(expected)).abs().max().item<double>(), 1e-5);
  for (int64_t r = 0; r < 4; ++r)
    for (int64_t j = 0; j < 5; ++j)
      EXPECT_EQ(std::to_string(ids[r][j].item<int64_t>()), items.external(std::get<1>(expected)[r][j].item<int64_t>()));
}

TEST(Export, StringIdsAndClearErrors) {
  SASRec model = random_model(12, 8, 4);
  const IdMap items = id_map(12, "item-", 1);
  auto module = export_torchscript(model, items, "", nlohmann::json::object());
  c10::List<c10::List<std::string>> histories;
  histories.push_back(c10::List<std::string>({"item-1", "item-8"}));
  auto out = module.get_method("recommend")({histories, int64_t{3}}).toTuple();
  auto ids = out->elements()[0].toList();
  ASSERT_EQ(ids.size(), 1u);
  auto row = ids.get(0).toList();
  ASSERT_EQ(row.size(), 3u);
  for (size_t j = 0; j < row.size(); ++j) {
    const std::string id = row.get(j).toStringRef();
    EXPECT_NE(items.find(id), -1);
    EXPECT_NE(id, "item-1");  // seen items are excluded
  }
  // Unknown ids and bad k name the problem.
  c10::List<c10::List<std::string>> unknown;
  unknown.push_back(c10::List<std::string>({"item-1", "nope"}));
  try {
    module.get_method("recommend")({unknown, int64_t{3}});
    FAIL() << "an unknown id was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("unknown item id nope"), std::string::npos) << e.what();
  }
  try {
    module.get_method("recommend")({histories, int64_t{13}});
    FAIL() << "k above the catalog was accepted";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("k must be in [1, 12]"), std::string::npos) << e.what();
  }
}

TEST(Export, RunsInAProgramThatLinksOnlyLibTorch) {
  SASRec model = random_model(20, 8, 9);
  const IdMap items = id_map(20, "", 50);
  auto module = export_torchscript(model, items, "", nlohmann::json::object());
  const std::string path = temp_folder("standalone") + "/model.pt";
  save_torchscript(module, path);
  c10::List<c10::List<int64_t>> histories;
  histories.push_back(c10::List<int64_t>({50, 57, 64}));
  auto out = module.get_method("recommend")({histories, int64_t{4}}).toTuple();
  auto ids = out->elements()[0].toTensor(), scores = out->elements()[1].toTensor();

  const std::string command = std::string(FRESHREC_TORCHSCRIPT_CHECK) + " " + path + " 4 50 57 64";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::string text;
  char buffer[256];
  while (std::fgets(buffer, sizeof buffer, pipe)) text += buffer;
  ASSERT_EQ(::pclose(pipe), 0) << text;
  std::istringstream lines(text);
  for (int64_t j = 0; j < 4; ++j) {
    long long id = 0;
    double score = 0;
    ASSERT_TRUE(lines >> id >> score) << text;
    EXPECT_EQ(id, ids[0][j].item<int64_t>());
    EXPECT_NEAR(score, scores[0][j].item<double>(), 1e-5);
  }
}

// ---- serving ---------------------------------------------------------------------------------------
#ifdef FRESHREC_WITH_HTTP
#include <atomic>
#include <thread>

#include "engine/export/publisher.h"
#include "engine/serve/server.h"

namespace {

nlohmann::json json_of(const std::optional<HttpReply>& r) { return nlohmann::json::parse(r->body); }

struct Served {
  std::string dir;
  std::unique_ptr<ModelServer> server;
  int port = 0;
  Served(const std::string& name, int64_t max_history = 10000) : dir(temp_folder(name)) {
    ServeOptions o;
    o.models_dir = dir, o.http.host = "127.0.0.1", o.http.port = 0, o.http.workers = 4, o.poll_ms = 20, o.max_history = max_history;
    server = std::make_unique<ModelServer>(o);
  }
  void start() { port = server->start(); }
};

// Waits until `done` holds, at most `seconds`; false when the deadline passed first.
bool wait_until(const std::function<bool()>& done, double seconds = 60) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::duration<double>(seconds);
  while (!done()) {
    if (std::chrono::steady_clock::now() > deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return true;
}

}  // namespace

TEST(Serve, HotReloadDropsNoRequest) {
  Served s("serve-reload");
  const IdMap items = id_map(25, "", 1);
  SASRec v1 = random_model(25, 8, 21), v2 = random_model(25, 8, 22);
  Publisher publisher(s.dir);
  publisher.publish(v1, items, "", {{"events", 100}});
  s.start();
  ASSERT_EQ(s.server->model_version(), 1);

  // A client sends requests without pause while version 2 is published.
  std::atomic<bool> stop{false};
  std::atomic<int> sent{0}, failed{0};
  std::atomic<int64_t> last_version{0};
  std::vector<int64_t> versions;
  std::thread client([&] {
    HttpClient http("127.0.0.1", s.port);
    while (!stop) {
      auto r = http.post("/recommend", R"({"history": [1, 8, 15], "k": 5})");
      ++sent;
      if (!r || r->status != 200) {
        ++failed;
        continue;
      }
      const auto body = json_of(r);
      if (body.at("items").size() != 5u) ++failed;
      versions.push_back(body.at("version").get<int64_t>());
      last_version = versions.back();
    }
  });
  // Behaviour, not timing: wait for the client to see version 2, then a few more requests (each wait
  // with a deadline, so a broken server fails the test instead of hanging it).
  const bool started = wait_until([&] { return sent >= 30; });
  publisher.publish(v2, items, "", {{"events", 200}});
  const bool reloaded = wait_until([&] { return last_version >= 2 || failed > 0; });
  const int seen = sent;
  const bool went_on = wait_until([&] { return sent >= seen + 20; });
  stop = true;
  client.join();
  ASSERT_TRUE(started && reloaded && went_on) << "sent " << sent << ", last version " << last_version;
  EXPECT_EQ(failed, 0);
  ASSERT_FALSE(versions.empty());
  EXPECT_EQ(versions.front(), 1);
  EXPECT_EQ(versions.back(), 2);
  EXPECT_TRUE(std::is_sorted(versions.begin(), versions.end()));  // never back to an old version

  HttpClient http("127.0.0.1", s.port);
  const auto metrics = http.get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_NE(metrics->body.find("freshrec_model_version 2"), std::string::npos) << metrics->body;
  EXPECT_NE(metrics->body.find("freshrec_requests_total{code=\"200\"}"), std::string::npos) << metrics->body;
  EXPECT_NE(metrics->body.find("freshrec_request_duration_seconds{quantile=\"0.99\"}"), std::string::npos);
  EXPECT_NE(metrics->body.find("freshrec_model_age_seconds"), std::string::npos);
  EXPECT_EQ(http.get("/healthz")->status, 200);
  s.server->stop();
}

TEST(Serve, VersionsOnlyGrowAndHealthTellsWhatTheServerRefuses) {
  Served s("serve-versions");
  const IdMap items = id_map(25, "", 1);
  SASRec model = random_model(25, 8, 31);
  {
    Publisher publisher(s.dir);
    publisher.publish(model, items, "", {});
    publisher.publish(model, items, "", {});
  }
  // The manifest is lost: the next publication continues after the files present, never from 1.
  fs::remove(fs::path(s.dir) / "manifest.json");
  const auto first_file = fs::last_write_time(fs::path(s.dir) / "model-v000001.pt");
  EXPECT_EQ(highest_published_version(s.dir), 2);
  EXPECT_EQ(Publisher(s.dir).publish(model, items, "", {}), 3);
  EXPECT_EQ(fs::last_write_time(fs::path(s.dir) / "model-v000001.pt"), first_file);
  s.start();
  ASSERT_EQ(s.server->model_version(), 3);
  HttpClient http("127.0.0.1", s.port);
  auto health = [&] { return json_of(http.get("/healthz")); };
  auto metrics = [&] { return http.get("/metrics")->body; };
  EXPECT_EQ(health().at("status"), "ok");

  // A manifest that names an older version is refused, and the server says so.
  const std::string manifest = (fs::path(s.dir) / "manifest.json").string();
  std::ofstream(manifest) << R"({"version": 2, "file": "model-v000002.pt"})";
  // (The watcher may first read the file half written, a malformed manifest: wait for the refusal.)
  ASSERT_TRUE(wait_until([&] { return health().value("problem", "").find("refused") != std::string::npos; }, 30));
  EXPECT_EQ(health().at("status"), "degraded");
  EXPECT_NE(metrics().find("freshrec_manifest_version 2"), std::string::npos);
  EXPECT_NE(metrics().find("freshrec_model_stale 1"), std::string::npos);
  EXPECT_EQ(s.server->model_version(), 3);

  // A newer version that cannot be loaded: counted, reported, and version 3 keeps serving.
  std::ofstream(fs::path(s.dir) / "model-v000004.pt") << "not a model";
  std::ofstream(manifest) << R"({"version": 4, "file": "model-v000004.pt"})";
  ASSERT_TRUE(wait_until([&] { return metrics().find("freshrec_model_load_failures_total 1") != std::string::npos; }, 30));
  EXPECT_EQ(health().at("problem"), "version 4 failed to load");  // counted and reported under one lock
  EXPECT_EQ(http.post("/recommend", R"({"history": [1], "k": 2})")->status, 200);

  // The folder disappears.
  remove_tree(s.dir);
  ASSERT_TRUE(wait_until([&] { return health().value("problem", "") == "the models folder is missing"; }, 30));
  const std::string text = http.get("/healthz")->body;
  EXPECT_EQ(text.find(s.dir), std::string::npos) << "no server path in answers: " << text;
  s.server->stop();
}

TEST(Serve, LoopbackByDefaultAndABearerTokenWhenGiven) {
  EXPECT_EQ(ServeOptions{}.http.host, "127.0.0.1");
  ServeOptions bad;
  bad.models_dir = "x", bad.http.port = 70000;
  EXPECT_THROW(ModelServer{bad}, std::invalid_argument);  // not wrapped to another port

  const std::string dir = temp_folder("serve-token");
  SASRec model = random_model(25, 8, 41);
  Publisher(dir).publish(model, id_map(25, "", 1), "", {});
  ServeOptions o;
  o.models_dir = dir, o.http.port = 0, o.poll_ms = 20, o.token = "s3cret-token-0123456789";
  ModelServer server(o);
  const int port = server.start();
  HttpClient http("127.0.0.1", port);
  const std::string body = R"({"history": [1, 8], "k": 2})";
  EXPECT_EQ(http.post("/recommend", body)->status, 401);
  EXPECT_EQ(http.get("/metrics")->status, 401);
  HttpClient::Headers wrong = {{"Authorization", "Bearer s3cret-token-0123456780"}};
  EXPECT_EQ(http.post("/recommend", body, wrong)->status, 401);
  HttpClient::Headers right = {{"Authorization", "Bearer s3cret-token-0123456789"}};
  EXPECT_EQ(http.post("/recommend", body, right)->status, 200);
  EXPECT_EQ(http.get("/metrics", right)->status, 200);
  EXPECT_EQ(http.get("/healthz")->status, 200);  // open to load balancers
  EXPECT_EQ(http.post("/healthz", std::string(1000, 'x'))->status, 401);  // but only as a bodiless GET
  server.stop();
  remove_tree(dir);
}

TEST(Serve, BadRequestsGetClearClientErrors) {
  Served s("serve-bad", /*max_history=*/50);
  s.start();
  HttpClient http("127.0.0.1", s.port);
  // Nothing published yet: 503, not a crash.
  EXPECT_EQ(http.get("/healthz")->status, 503);
  EXPECT_EQ(http.post("/recommend", R"({"history": [1], "k": 1})")->status, 503);

  Publisher publisher(s.dir);
  SASRec model = random_model(20, 8, 5);
  publisher.publish(model, id_map(20, "", 1), "", nlohmann::json::object());
  ASSERT_TRUE(wait_until([&] { return s.server->model_version() == 1; }, 60));

  auto expect_error = [&](const std::string& body, int status, const std::string& words) {
    auto r = http.post("/recommend", body);
    ASSERT_TRUE(r) << body;
    EXPECT_EQ(r->status, status) << body << " -> " << r->body;
    const auto error = json_of(r).at("error").get<std::string>();
    EXPECT_NE(error.find(words), std::string::npos) << body << " -> " << error;
  };
  expect_error(R"({"history": [1, 2)", 400, "not valid JSON");
  expect_error(R"([1, 2, 3])", 400, "must be a JSON object");
  expect_error(R"({"history": [1, 999], "k": 3})", 400, "unknown item id '999' at history[1]");
  expect_error(R"({"histories": [[1], [8, 4242]], "k": 3})", 400, "unknown item id '4242' at histories[1][1]");
  expect_error(R"({"history": [1], "k": 0})", 400, "k must be in [1, 20]");
  expect_error(R"({"history": [1], "k": 21})", 400, "k must be in [1, 20]");
  expect_error(R"({"history": [1], "k": "ten"})", 400, "k must be an integer");
  expect_error(R"({"history": [1, {"a": 1}]})", 400, "history[1] must be an item id");
  expect_error(R"({"history": 5})", 400, "history must be an array");
  expect_error(R"({"k": 3})", 400, "exactly one of 'history' and 'histories'");
  expect_error(R"({"history": [1], "histories": [[1]]})", 400, "exactly one of");
  expect_error(R"({"history": [1], "limit": 3})", 400, "unknown field 'limit'");
  std::string oversized = R"({"history": [)";
  for (int i = 0; i < 51; ++i) oversized += (i ? ",1" : "1");
  expect_error(oversized + "]}", 413, "at most 50");
  auto missing = http.get("/nope");
  ASSERT_TRUE(missing);
  EXPECT_EQ(missing->status, 404);
  EXPECT_NE(json_of(missing).at("error").get<std::string>().find("no such endpoint"), std::string::npos);

  // And a good request still works, batch form included; ids are answered as strings, whatever their
  // form in the request.
  auto good = http.post("/recommend", R"({"histories": [[1, 8], ["15"]], "k": 4})");
  ASSERT_EQ(good->status, 200) << good->body;
  const auto body = json_of(good);
  ASSERT_EQ(body.at("results").size(), 2u);
  EXPECT_EQ(body.at("results")[0].size(), 4u);
  EXPECT_TRUE(body.at("results")[0][0].at("id").is_string());
  const auto metrics = http.get("/metrics")->body;
  EXPECT_NE(metrics.find("freshrec_requests_total{code=\"400\"} 12"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("freshrec_requests_total{code=\"413\"} 1"), std::string::npos) << metrics;
  s.server->stop();
}
#endif

TEST(Export, RecommendCommandAnswersEachLineAndNamesBadOnes) {
  SASRec model = random_model(15, 8, 3);
  const IdMap items = id_map(15, "", 10);  // ids 10, 17, 24, ...
  auto module = export_torchscript(model, items, "", nlohmann::json::object());
  const std::string dir = temp_folder("recommend");
  save_torchscript(module, dir + "/model.pt");
  {
    std::ofstream lines(dir + "/histories.txt");
    lines << "10,17 24\n10,999\n\n";
  }
  const std::string command = std::string(FRESHREC_BINARY) + " --log-level off recommend --model " + dir +
                              "/model.pt --histories " + dir + "/histories.txt -k 3";
  FILE* pipe = ::popen(command.c_str(), "r");
  ASSERT_NE(pipe, nullptr);
  std::vector<nlohmann::json> out;
  char buffer[4096];
  while (std::fgets(buffer, sizeof buffer, pipe)) out.push_back(nlohmann::json::parse(buffer));
  EXPECT_NE(::pclose(pipe), 0);  // a line failed: the exit status says so
  ASSERT_EQ(out.size(), 3u);
  EXPECT_EQ(out[0].at("ids").size(), 3u);
  EXPECT_NE(out[1].at("error").get<std::string>().find("histories.txt:2: unknown item id '999'"), std::string::npos)
      << out[1];
  EXPECT_EQ(out[2].at("ids").size(), 3u);  // an empty history still gets an answer (the most likely first items)
}

// bench serve answers calls of several histories, directly and (where built) through HTTP, and
// reports each path's latency and requests per second; a batch larger than the requests is refused.
TEST(Export, ServeBenchAnswersBatchedCalls) {
  SASRec model = random_model(15, 8, 3);
  const std::string dir = temp_folder("bench-serve");
  auto module = export_torchscript(model, id_map(15, "", 10), "", nlohmann::json::object());
  save_torchscript(module, dir + "/model.pt");
  auto run = [&](const std::string& args) {
    return testing_support::run_command(std::string(FRESHREC_BINARY) + " --log-level warn bench serve --model " + dir +
                                        "/model.pt " + args);
  };
  auto [rc, out] = run("--requests 12 --history 5 --batch 4");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("calls of 4 histories of 5 items"), std::string::npos) << out;
  EXPECT_NE(out.find("requests/s"), std::string::npos) << out;
  EXPECT_NE(out.find("TorchScript call (in process)"), std::string::npos) << out;
#ifdef FRESHREC_WITH_HTTP
  EXPECT_NE(out.find("HTTP POST /recommend (serve)"), std::string::npos) << out;
#endif
  std::tie(rc, out) = run("--requests 3 --batch 4");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("--batch at most --requests"), std::string::npos) << out;
  remove_tree(dir);
}
