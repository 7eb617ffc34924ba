// Torch-free tests: config validation, readers on good and bad input, the generator, the
// leave-one-out split and batches, and the ranking metrics against hand-computed cases.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>
#include <zlib.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>

#include "engine/config/config.h"
#include "engine/data/generator.h"
#include "engine/dist/dist_env.h"
#include "engine/data/ids.h"
#include "engine/data/item_features.h"
#include "engine/data/readers.h"
#include "engine/data/sequences.h"
#include "engine/eval/metrics.h"
#include "engine/train/epoch_batches.h"
#include "engine/train/learner_settings.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using namespace freshrec;
using freshrec::testing_support::error_of;
using freshrec::testing_support::TempDir;

namespace {

ReaderOptions options_for(LogFormat format, bool strict = false) {
  ReaderOptions o;
  o.format = format;
  o.strict = strict;
  return o;
}

}  // namespace

// ---- config ------------------------------------------------------------------------------------

TEST(Config, DefaultsAndOverrides) {
  Config c;
  EXPECT_EQ(c.get_int("model.hidden"), 64);
  EXPECT_EQ(c.get_string("train.loss"), "full");
  c.apply_override("model.hidden=128");
  c.apply_override("eval.ks=[1,10]");
  c.apply_override("data.csv.delimiter=,");
  EXPECT_EQ(c.get_int("model.hidden"), 128);
  EXPECT_EQ(c.get_int_list("eval.ks"), (std::vector<long long>{1, 10}));
  EXPECT_EQ(c.get_string("data.csv.delimiter"), ",");
  EXPECT_EQ(c.origin("model.hidden"), "command line");
}

// The learner's settings come from the config once: training (and a fine-tune's item rate) from
// train.*, the stream's from stream.* where it has its own keys.
TEST(Config, LearnerSettingsReadTrainingAndStreamKeys) {
  Config c;
  c.apply_override("train.lr=0.002");
  c.apply_override("finetune.item_lr=0.02");
  c.apply_override("train.weight_decay=0.1");
  c.apply_override("train.clip_norm=2");
  c.apply_override("train.sparse_embeddings=true");
  c.apply_override("stream.lr=0.0005");
  c.apply_override("stream.max_loss=40");
  const LearnerSettings trained = LearnerSettings::training(c, /*finetune=*/false);
  EXPECT_DOUBLE_EQ(trained.lr, 0.002);
  EXPECT_DOUBLE_EQ(trained.item_lr, 0.002);  // finetune.item_lr is a fine-tune's alone
  EXPECT_DOUBLE_EQ(trained.weight_decay, 0.1);
  EXPECT_DOUBLE_EQ(trained.clip_norm, 2);
  EXPECT_TRUE(trained.row_wise_items);
  EXPECT_FALSE(trained.guard);
  EXPECT_DOUBLE_EQ(LearnerSettings::training(c, /*finetune=*/true).item_lr, 0.02);
  c.apply_override("finetune.item_lr=0");  // 0: the dense rate
  EXPECT_DOUBLE_EQ(LearnerSettings::training(c, true).item_lr, 0.002);
  const LearnerSettings streamed = LearnerSettings::streaming(c);
  EXPECT_DOUBLE_EQ(streamed.lr, 0.0005);
  EXPECT_DOUBLE_EQ(streamed.item_lr, 0.0005);
  EXPECT_DOUBLE_EQ(streamed.weight_decay, 0);
  EXPECT_DOUBLE_EQ(streamed.clip_norm, 2);
  EXPECT_TRUE(streamed.guard);
  EXPECT_DOUBLE_EQ(streamed.max_loss, 40);
  EXPECT_TRUE(streamed.row_wise_items);
}

// The launcher's variables: none is a job of one; a job of several needs the rendezvous; malformed or
// out-of-range values are refused with the variable's name.
TEST(DistEnv, ReadsTheLaunchersVariablesAndRefusesBadOnes) {
  auto with = [](std::map<std::string, std::string> vars) {
    return [vars](const char* name) -> const char* {
      const auto it = vars.find(name);
      return it == vars.end() ? nullptr : it->second.c_str();
    };
  };
  const DistEnv alone = DistEnv::from_environment(with({}));
  EXPECT_FALSE(alone.distributed());
  EXPECT_EQ(alone.rank, 0);
  const DistEnv e = DistEnv::from_environment(with({{"RANK", "3"}, {"WORLD_SIZE", "4"}, {"LOCAL_RANK", "1"},
                                                    {"MASTER_ADDR", "node-1"}, {"MASTER_PORT", "29500"},
                                                    {"TORCHELASTIC_USE_AGENT_STORE", "True"},
                                                    {"TORCHELASTIC_RESTART_COUNT", "2"}}));
  EXPECT_TRUE(e.distributed());
  EXPECT_EQ(e.rank, 3);
  EXPECT_EQ(e.world_size, 4);
  EXPECT_EQ(e.local_rank, 1);
  EXPECT_EQ(e.master_addr, "node-1");
  EXPECT_EQ(e.master_port, 29500);
  EXPECT_TRUE(e.agent_store);
  EXPECT_EQ(e.restart_count, 2);
  const std::vector<std::pair<std::map<std::string, std::string>, std::string>> bad = {
      {{{"WORLD_SIZE", "2"}, {"RANK", "2"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "1"}}, "RANK='2': expected a whole number from 0 to 1"},
      {{{"WORLD_SIZE", "two"}}, "WORLD_SIZE='two'"},
      {{{"WORLD_SIZE", "0"}}, "WORLD_SIZE='0'"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "-1"}}, "RANK='-1'"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_PORT", "1"}}, "MASTER_ADDR is not set"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}}, "MASTER_PORT is not set"},
      {{{"WORLD_SIZE", "2"}, {"RANK", "1"}, {"MASTER_ADDR", "h"}, {"MASTER_PORT", "70000"}}, "MASTER_PORT='70000'"},
      {{{"WORLD_SIZE", "99999999999"}}, "WORLD_SIZE='99999999999'"},
  };
  for (const auto& [vars, message] : bad) {
    const std::string error = error_of([&] { DistEnv::from_environment(with(vars)); });
    EXPECT_NE(error.find(message), std::string::npos) << error;
  }
}

// Data-parallel shares tile each global batch in order; with owned users (local SGD) every user is
// trained once per epoch by its owner, every rank runs as many steps, and the last ones may be empty.
TEST(EpochBatches, SharesTileTheGlobalBatchesAndOwnedUsersAreEachTrainedOnce) {
  std::vector<int32_t> users(103);
  for (int32_t i = 0; i < 103; ++i) users[static_cast<size_t>(i)] = 1000 + i;
  const EpochBatches whole(users, 16, 0, 1, false, 9);
  ASSERT_EQ(whole.steps(), 7);
  for (int64_t b = 0; b < whole.steps(); ++b) {
    std::vector<int32_t> joined;
    for (int r = 0; r < 3; ++r) {
      const EpochBatches share(users, 16, r, 3, false, 9);
      EXPECT_EQ(share.steps(), whole.steps());
      const auto part = share.users(b);
      joined.insert(joined.end(), part.begin(), part.end());
    }
    EXPECT_EQ(joined, whole.users(b)) << "step " << b;
  }
  std::multiset<int32_t> seen;
  int64_t steps = -1;
  for (int r = 0; r < 3; ++r) {
    const EpochBatches own(users, 16, r, 3, true, 9);
    if (steps < 0) steps = own.steps();
    EXPECT_EQ(own.steps(), steps);
    for (int64_t b = 0; b < own.steps(); ++b)
      for (int32_t u : own.users(b)) {
        EXPECT_EQ((u - 1000) % 3, r) << "a rank trains its own users only";
        seen.insert(u);
      }
  }
  EXPECT_EQ(steps, 7);  // rank 0 owns 35 users, in batches of 16 / 3 = 5
  EXPECT_EQ(seen, std::multiset<int32_t>(users.begin(), users.end()));
  // Ten users, three ranks, one user a step each: rank 0 owns 4, rank 1 owns 3 and idles at the 4th step.
  const std::vector<int32_t> ten(users.begin(), users.begin() + 10);
  const EpochBatches idle(ten, 3, 1, 3, true, 9);
  EXPECT_EQ(idle.steps(), 4);
  EXPECT_EQ(idle.users(2).size(), 1u);
  EXPECT_TRUE(idle.users(3).empty());
}

TEST(Config, YamlFileWithLineNumbersInErrors) {
  TempDir dir;
  const auto good = dir.write("good.yaml", "model:\n  hidden: 32\ntrain:\n  lr: 0.01\n");
  const Config c = Config::from_yaml_file(good);
  EXPECT_EQ(c.get_int("model.hidden"), 32);
  EXPECT_DOUBLE_EQ(c.get_float("train.lr"), 0.01);
  EXPECT_EQ(c.origin("train.lr"), good + ":4");

  const auto typo = dir.write("typo.yaml", "model:\n  hiden: 32\n");
  const auto message = error_of([&] { Config::from_yaml_file(typo); });
  EXPECT_NE(message.find(typo + ":2"), std::string::npos) << message;
  EXPECT_NE(message.find("unknown config key 'model.hiden'"), std::string::npos) << message;
  EXPECT_NE(message.find("did you mean 'model.hidden'"), std::string::npos) << message;

  const auto bad_type = dir.write("type.yaml", "train:\n  epochs: many\n");
  EXPECT_NE(error_of([&] { Config::from_yaml_file(bad_type); }).find("'many' is not an integer"), std::string::npos);
  const auto bad_choice = dir.write("choice.yaml", "train:\n  loss: ful\n");
  EXPECT_NE(error_of([&] { Config::from_yaml_file(bad_choice); }).find("one of: full, sampled"), std::string::npos);
  const auto bad_yaml = dir.write("broken.yaml", "model: [\n");
  EXPECT_NE(error_of([&] { Config::from_yaml_file(bad_yaml); }).find("invalid YAML"), std::string::npos);
  EXPECT_NE(error_of([] { Config::from_yaml_file("/nonexistent/x.yaml"); }).find("cannot open"), std::string::npos);
}

TEST(Config, StoredConfigsSkipKeysOfOtherVersions) {
  std::vector<std::string> skipped;
  const Config c = Config::from_stored_yaml("model:\n  hidden: 24\nstream:\n  retired_key: 3\n", "checkpoint", &skipped);
  EXPECT_EQ(c.get_int("model.hidden"), 24);
  EXPECT_EQ(skipped, (std::vector<std::string>{"stream.retired_key"}));
  EXPECT_THROW(Config::from_stored_yaml("model:\n  hidden: wide\n", "checkpoint", &skipped), ConfigError);
}

TEST(Config, OverrideErrorsNameTheKey) {
  Config c;
  EXPECT_NE(error_of([&] { c.apply_override("train.hidden=3"); }).find("did you mean 'model.hidden'"), std::string::npos);
  EXPECT_NE(error_of([&] { c.apply_override("model.hidden"); }).find("not key=value"), std::string::npos);
  EXPECT_NE(error_of([&] { c.apply_override("model.dropout=abc"); }).find("model.dropout"), std::string::npos);
  EXPECT_NE(error_of([&] { c.apply_override("data.strict=maybe"); }).find("true or false"), std::string::npos);
}

TEST(Config, EveryNumberHasARangeAndValuesOutsideItAreRefused) {
  for (const KeySpec& spec : config_schema()) {
    if (spec.type != KeyType::Int && spec.type != KeyType::Float && spec.type != KeyType::IntList) continue;
    EXPECT_TRUE(std::isfinite(spec.min) && std::isfinite(spec.max) && spec.min <= spec.max) << spec.name;
  }
  Config c;  // every default lies in its range (the constructor checks them)
  const std::vector<std::pair<std::string, std::string>> refused = {
      {"model.maxlen=1000000000000", "model.maxlen: '1000000000000' is not within 1 to 65536"},
      {"stream.grow_chunk=100000000000", "stream.grow_chunk"},
      {"train.lr=-1", "train.lr: '-1' is not within 0 to 10"},
      {"train.beta1=2", "train.beta1"},
      {"train.ce_chunk=0", "train.ce_chunk"},
      {"model.dropout=1", "model.dropout"},
      {"eval.ks=[0, 10]", "eval.ks"},
      {"eval.ks=5,0", "eval.ks"},
      {"generator.users=-5", "generator.users"},
  };
  for (const auto& [assignment, message] : refused)
    EXPECT_NE(error_of([&] { c.apply_override(assignment); }).find(message), std::string::npos) << assignment;
  EXPECT_EQ(c.get_int("model.maxlen"), 200);  // a refused value changes nothing
  c.apply_override("model.maxlen=65536");
  EXPECT_EQ(c.get_int("model.maxlen"), 65536);
  c.apply_override("data.csv.header=false");
  c.apply_override("data.format=csv");
  c.apply_override("data.csv.user=2147483647");
  EXPECT_NE(error_of([&] { ReaderOptions::from_config(c); }).find("data.csv.user: column index 2147483647 is not within"),
            std::string::npos);
}

TEST(Config, YamlRoundTrip) {
  Config c;
  c.apply_override("model.hidden=48");
  c.apply_override("train.lr=0.0003");
  c.apply_override("eval.ks=[3,7]");
  c.apply_override("data.path=some file.txt");
  const Config back = Config::from_yaml_string(c.to_yaml());
  EXPECT_EQ(back.to_yaml(), c.to_yaml());
  EXPECT_EQ(back.get_int("model.hidden"), 48);
  EXPECT_DOUBLE_EQ(back.get_float("train.lr"), 0.0003);
  EXPECT_EQ(back.get_string("data.path"), "some file.txt");
}

// A map of further settings (librdkafka's): dotted names stay whole, from YAML and the command line;
// anything but a map of single values is refused naming the key; secrets never reach stored YAML.
TEST(Config, StringMapsKeepDottedNamesAndRedactSecrets) {
  const Config c = Config::from_yaml_string(
      "stream:\n  kafka:\n    properties:\n      session.timeout.ms: 6000\n      sasl.password: hunter2\n"
      "      security.protocol: SASL_SSL\n",
      "k.yaml");
  const StringMap& p = c.get_string_map("stream.kafka.properties");
  ASSERT_EQ(p.size(), 3u);
  EXPECT_EQ(p.at("session.timeout.ms"), "6000");
  EXPECT_EQ(p.at("sasl.password"), "hunter2");
  const std::string stored = c.to_yaml();
  EXPECT_EQ(stored.find("hunter2"), std::string::npos);
  EXPECT_NE(stored.find("<redacted>"), std::string::npos);
  const Config back = Config::from_yaml_string(stored);
  EXPECT_EQ(back.get_string_map("stream.kafka.properties").at("security.protocol"), "SASL_SSL");

  Config o;
  o.apply_override("stream.kafka.properties={heartbeat.interval.ms: 500, client.id: a b}");
  EXPECT_EQ(o.get_string_map("stream.kafka.properties").at("client.id"), "a b");
  EXPECT_TRUE(Config().get_string_map("stream.kafka.properties").empty());
  for (const char* bad : {"stream.kafka.properties=5", "stream.kafka.properties=[a, b]",
                          "stream.kafka.properties={a: [1, 2]}", "stream.kafka.properties={a: {b: c}}"}) {
    try {
      Config().apply_override(bad);
      ADD_FAILURE() << bad << " was accepted";
    } catch (const ConfigError& e) {
      EXPECT_NE(std::string(e.what()).find("stream.kafka.properties"), std::string::npos) << e.what();
    }
  }
}

// ---- readers -----------------------------------------------------------------------------------

TEST(Readers, SasrecFormat) {
  TempDir dir;
  const auto path = dir.write("log.txt", "1 10\n1 11\n2 10\n1 12\n\n2 13\n");
  ReadReport report;
  const EventLog log = read_event_log(path, options_for(LogFormat::Sasrec), &report);
  EXPECT_EQ(log.events.size(), 5u);
  EXPECT_EQ(log.num_users(), 2);
  EXPECT_EQ(log.num_items(), 4);
  EXPECT_EQ(report.error_count(), 0u);
  const UserSequences s = UserSequences::from_log(log);
  ASSERT_EQ(s.items[0].size(), 3u);
  EXPECT_EQ(log.items.external(s.items[0][2]), "12");  // line order is time order
}

TEST(Readers, MovielensFormats) {
  TempDir dir;
  const auto dat = dir.write("ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n2::1193::4::978298413\n");
  const EventLog a = read_event_log(dat, options_for(LogFormat::MovielensDat), nullptr);
  ASSERT_EQ(a.events.size(), 3u);
  EXPECT_EQ(a.events.front().timestamp, 978298413);  // sorted by time
  EXPECT_FLOAT_EQ(a.events.front().rating, 4.0f);

  const auto csv = dir.write("ratings.csv", "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,3,4.5,964981247\n");
  const EventLog b = read_event_log(csv, options_for(LogFormat::MovielensCsv), nullptr);
  ASSERT_EQ(b.events.size(), 2u);
  EXPECT_EQ(b.items.external(b.events.front().item), "3");

  const auto udata = dir.write("u.data", "196\t242\t3\t881250949\n186\t302\t3\t891717742\n");
  const EventLog c = read_event_log(udata, options_for(LogFormat::MovielensUdata), nullptr);
  EXPECT_EQ(c.events.size(), 2u);

  ReaderOptions filtered = options_for(LogFormat::MovielensDat);
  filtered.min_rating = 4;
  ReadReport report;
  EXPECT_EQ(read_event_log(dat, filtered, &report).events.size(), 2u);
  EXPECT_EQ(report.below_min_rating, 1u);
}

// Item side features: MovieLens movies.dat and movies.csv (quoted titles with commas, a header,
// "(no genres listed)"), a two-column CSV; lines it cannot read are named with file and line.
TEST(Readers, ItemFeaturesOfEachForm) {
  TempDir dir;
  const auto dat = read_item_features(dir.write("movies.dat", "1::Toy Story (1995)::Animation|Children's|Comedy\n2::Heat (1995)::Action\n"));
  EXPECT_EQ(dat.at("1"), (std::vector<std::string>{"Animation", "Children's", "Comedy"}));
  EXPECT_EQ(dat.at("2"), (std::vector<std::string>{"Action"}));
  const auto csv = read_item_features(dir.write(
      "movies.csv", "movieId,title,genres\n11,\"American President, The (1995)\",Comedy|Drama|Romance\n"
                    "12,Dracula (1995),Comedy|Horror\n13,Untitled,(no genres listed)\n"));
  EXPECT_EQ(csv.size(), 3u);
  EXPECT_EQ(csv.at("11"), (std::vector<std::string>{"Comedy", "Drama", "Romance"}));
  EXPECT_TRUE(csv.at("13").empty());
  const auto plain = read_item_features(dir.write("tags.csv", "a,x|y\nb,\n"));
  EXPECT_EQ(plain.at("a"), (std::vector<std::string>{"x", "y"}));
  EXPECT_TRUE(plain.at("b").empty());
  std::string e = error_of([&] { read_item_features(dir.write("twice.csv", "a,x\nb,y\na,z\n")); });
  EXPECT_NE(e.find("twice.csv:3: item a is listed twice (first at line 1)"), std::string::npos) << e;
  e = error_of([&] { read_item_features(dir.write("bad.dat", "1::A::B\n2 no separator\n")); });
  EXPECT_NE(e.find("bad.dat:2: no '::' separator"), std::string::npos) << e;
  e = error_of([&] { read_item_features(dir.write("empty.csv", "\n\n")); });
  EXPECT_NE(e.find("empty.csv: no item features in it"), std::string::npos) << e;
  e = error_of([&] { read_item_features(dir.write("quoted.csv", "1,\"Comedy|Drama\"\n")); });
  EXPECT_NE(e.find("quoted.csv:1: a quoted features field"), std::string::npos) << e;
}

TEST(Readers, RecboleAndGenericCsv) {
  TempDir dir;
  const auto inter = dir.write("x.inter",
                               "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
                               "u1\tiA\t4\t100.0\nu1\tiB\t5\t50\n");
  const EventLog r = read_event_log(inter, options_for(LogFormat::Recbole), nullptr);
  ASSERT_EQ(r.events.size(), 2u);
  EXPECT_EQ(r.items.external(r.events.front().item), "iB");

  ReaderOptions csv = options_for(LogFormat::Csv);
  csv.delimiter = ';';
  csv.user_column = "who";
  csv.item_column = "what";
  csv.time_column = "when";
  const auto path = dir.write("x.csv", "what;who;when\nbook;ann;20\npen;bob;10\n");
  const EventLog g = read_event_log(path, csv, nullptr);
  ASSERT_EQ(g.events.size(), 2u);
  EXPECT_EQ(g.users.external(g.events.front().user), "bob");

  ReaderOptions by_index = options_for(LogFormat::Csv);
  by_index.header = false;
  by_index.delimiter = '\t';
  by_index.user_column = "1";
  by_index.item_column = "0";
  by_index.time_column = "";
  const auto tsv = dir.write("x.tsv", "book\tann\npen\tbob\n");
  const EventLog t = read_event_log(tsv, by_index, nullptr);
  EXPECT_EQ(t.users.external(t.events.front().user), "ann");
}

TEST(Readers, GzippedFile) {
  TempDir dir;
  const auto path = (dir.path() / "ratings.dat.gz").string();
  gzFile f = gzopen(path.c_str(), "wb");
  const std::string text = "1::10::5::100\n2::10::4::200\n";
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  EXPECT_EQ(read_event_log(path, options_for(LogFormat::MovielensDat), nullptr).events.size(), 2u);
}

TEST(Readers, TruncatedOrCorruptCompressedFilesAreErrors) {
  TempDir dir;
  const auto path = (dir.path() / "ratings.dat.gz").string();
  std::string text;
  for (int i = 0; i < 20000; ++i) text += std::to_string(i % 97) + "::" + std::to_string(i % 31) + "::5::" + std::to_string(i) + "\n";
  gzFile f = gzopen(path.c_str(), "wb");
  gzwrite(f, text.data(), static_cast<unsigned>(text.size()));
  gzclose(f);
  std::string bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), {});
  }
  const auto truncated = dir.write("cut.dat.gz", bytes.substr(0, bytes.size() / 2));
  for (bool strict : {false, true})
    EXPECT_NE(error_of([&] { read_event_log(truncated, options_for(LogFormat::MovielensDat, strict), nullptr); })
                  .find("cut.dat.gz: truncated compressed file"),
              std::string::npos);
  std::string flipped = bytes;
  flipped[bytes.size() / 2] = static_cast<char>(flipped[bytes.size() / 2] ^ 0x5a);
  const auto corrupt = dir.write("corrupt.dat.gz", flipped);
  EXPECT_NE(error_of([&] { read_lines(corrupt); }).find("corrupt.dat.gz: read failed"), std::string::npos);
  const auto no_trailer = dir.write("no-trailer.dat.gz", bytes.substr(0, bytes.size() - 4));  // the length field cut
  EXPECT_NE(error_of([&] { read_lines(no_trailer); }).find("truncated"), std::string::npos);
}

TEST(Readers, BadLinesAreCountedWithFileAndLine) {
  TempDir dir;
  const auto path = dir.write("bad.dat", "1::10::5::100\nnot a line\n2::x::4::200\n3::11::4::soon\n4::12::4::300\n");
  ReadReport report;
  const EventLog log = read_event_log(path, options_for(LogFormat::MovielensDat), &report);
  EXPECT_EQ(log.events.size(), 2u);
  EXPECT_EQ(report.lines, 5u);
  EXPECT_EQ(report.error_count(), 3u);
  EXPECT_EQ(report.errors.at("too few fields"), 1u);
  EXPECT_EQ(report.errors.at("non-numeric item id"), 1u);
  EXPECT_EQ(report.errors.at("bad timestamp"), 1u);
  ASSERT_EQ(report.examples.size(), 3u);
  EXPECT_NE(report.examples[0].find(path + ":2:"), std::string::npos) << report.examples[0];
  EXPECT_NE(report.examples[1].find("item id 'x' is not a non-negative integer"), std::string::npos);
  EXPECT_NE(report.summary().find("3 skipped"), std::string::npos);
}

TEST(Readers, StrictStopsAtTheFirstBadLine) {
  TempDir dir;
  const auto path = dir.write("bad.txt", "1 10\n1 11\n-3 12\n");
  const auto message = error_of([&] { read_event_log(path, options_for(LogFormat::Sasrec, true), nullptr); });
  EXPECT_NE(message.find(path + ":3: user id '-3' is not a non-negative integer"), std::string::npos) << message;
}

TEST(Readers, StructuralProblemsAreAlwaysErrors) {
  TempDir dir;
  const auto empty = dir.write("empty.txt", "\n\n");
  EXPECT_NE(error_of([&] { read_event_log(empty, options_for(LogFormat::Sasrec), nullptr); }).find("empty file"),
            std::string::npos);
  const auto header = dir.write("r.csv", "userId,movieId,timestamp\n1,2,3\n");
  const auto message = error_of([&] { read_event_log(header, options_for(LogFormat::MovielensCsv), nullptr); });
  EXPECT_NE(message.find(header + ":1: column 'rating' not in the header"), std::string::npos) << message;
  EXPECT_NE(error_of([&] { read_event_log(dir.path() / "missing.txt", options_for(LogFormat::Sasrec), nullptr); })
                .find("cannot open"),
            std::string::npos);
  const auto all_bad = dir.write("junk.txt", "a b\nc d\n");
  EXPECT_NE(error_of([&] { read_event_log(all_bad, options_for(LogFormat::Sasrec), nullptr); }).find("no valid events"),
            std::string::npos);
  EXPECT_NE(error_of([] { parse_log_format("parquet"); }).find("known: csv"), std::string::npos);
}

TEST(Readers, ConfigSelectsReaderAndChecksColumns) {
  Config c;
  c.apply_override("data.format=csv");
  c.apply_override("data.csv.header=false");
  c.apply_override("data.csv.user=user");
  EXPECT_NE(error_of([&] { ReaderOptions::from_config(c); }).find("not a column index"), std::string::npos);
  EXPECT_NE(error_of([&] { load_event_log(c, nullptr); }).find("data.path is empty"), std::string::npos);
}

// ---- generator ---------------------------------------------------------------------------------

TEST(Generator, SeededAndReproducible) {
  GeneratorOptions o;
  o.users = 200;
  o.items = 100;
  const EventLog a = generate_event_log(o), b = generate_event_log(o);
  ASSERT_EQ(a.events.size(), b.events.size());
  for (size_t i = 0; i < a.events.size(); ++i) {
    EXPECT_EQ(a.events[i].item, b.events[i].item);
    EXPECT_EQ(a.events[i].timestamp, b.events[i].timestamp);
  }
  o.seed = 8;
  const EventLog c = generate_event_log(o);
  size_t same = 0;
  for (size_t i = 0; i < std::min(a.events.size(), c.events.size()); ++i) same += a.events[i].item == c.events[i].item;
  EXPECT_LT(same, a.events.size() / 2);
}

TEST(Generator, StructureIsThere) {
  GeneratorOptions o;
  o.users = 400;
  o.items = 200;
  o.new_item_fraction = 0.3;
  const EventLog log = generate_event_log(o);
  EXPECT_GT(log.events.size(), static_cast<size_t>(o.users * (o.events_per_user - 10)));
  EXPECT_LE(log.num_items(), o.items);
  for (size_t i = 1; i < log.events.size(); ++i) ASSERT_LE(log.events[i - 1].timestamp, log.events[i].timestamp);
  // New items: some items first appear late in the log.
  std::set<int32_t> seen_in_first_tenth;
  for (size_t i = 0; i < log.events.size() / 10; ++i) seen_in_first_tenth.insert(log.events[i].item);
  EXPECT_LT(seen_in_first_tenth.size(), static_cast<size_t>(log.num_items()) * 9 / 10);
  // No repeats within a user.
  const UserSequences s = UserSequences::from_log(log);
  for (const auto& seq : s.items) EXPECT_EQ(std::set<int32_t>(seq.begin(), seq.end()).size(), seq.size());
  EXPECT_NE(error_of([] { GeneratorOptions bad; bad.clusters = 0; generate_event_log(bad); }).find("clusters"),
            std::string::npos);
}

// ---- sequences ---------------------------------------------------------------------------------

TEST(Sequences, LeaveOneOutAndBatches) {
  UserSequences s;
  s.num_items = 9;
  s.items = {{1, 2, 3, 4, 5}, {6, 7}, {8, 9, 1}};
  EXPECT_EQ(s.evaluation_users(), (std::vector<int32_t>{0, 2}));
  EXPECT_EQ(s.training_users(), (std::vector<int32_t>{0, 1}));  // user 2 keeps one training item
  EXPECT_EQ(s.prefix_length(0, Split::Train), 3u);
  EXPECT_EQ(s.prefix_length(0, Split::Validation), 3u);
  EXPECT_EQ(s.prefix_length(0, Split::Test), 4u);

  const SequenceBatch train = make_train_batch(s, {0, 1}, 4);
  // user 0 trains on 1,2,3: inputs [0 0 1 2], targets [0 0 2 3]; user 1 on 6,7.
  EXPECT_EQ(train.inputs, (std::vector<int64_t>{0, 0, 1, 2, 0, 0, 0, 6}));
  EXPECT_EQ(train.targets, (std::vector<int64_t>{0, 0, 2, 3, 0, 0, 0, 7}));

  const SequenceBatch valid = make_eval_batch(s, {0, 2}, Split::Validation, 2);
  EXPECT_EQ(valid.inputs, (std::vector<int64_t>{2, 3, 0, 8}));
  EXPECT_EQ(valid.targets, (std::vector<int64_t>{4, 9}));
  const SequenceBatch test = make_eval_batch(s, {0}, Split::Test, 8);
  EXPECT_EQ(test.targets, (std::vector<int64_t>{5}));
  EXPECT_EQ(test.inputs[7], 4);

  const auto counts = s.training_item_counts();
  // Training prefixes: user 0 {1,2,3}, user 1 {6,7}, user 2 {8}.
  EXPECT_EQ(counts, (std::vector<int64_t>{0, 1, 1, 1, 0, 0, 1, 1, 1, 0}));
}

// ---- metrics -----------------------------------------------------------------------------------

// Two shares' sums, added, are the whole's: what processes that each rank a share of the users reduce.
TEST(Metrics, SumsOfSharesAddUpToTheWhole) {
  RankingMetrics whole({1, 10}), first({1, 10}), second({1, 10});
  const std::vector<int64_t> ranks = {0, 3, 12, 1, 0, 9, 40, 2};
  for (size_t i = 0; i < ranks.size(); ++i) {
    whole.add(ranks[i]);
    (i < 3 ? first : second).add(ranks[i]);
  }
  std::vector<double> sums = first.sums();
  const auto more = second.sums();
  for (size_t i = 0; i < sums.size(); ++i) sums[i] += more[i];
  const RankingMetrics back = RankingMetrics::from_sums({1, 10}, sums);
  EXPECT_EQ(back.count(), whole.count());
  EXPECT_DOUBLE_EQ(back.ndcg(10), whole.ndcg(10));
  EXPECT_DOUBLE_EQ(back.hit_rate(1), whole.hit_rate(1));
  EXPECT_DOUBLE_EQ(back.mrr(), whole.mrr());
  EXPECT_NE(error_of([&] { RankingMetrics::from_sums({1, 10, 20}, sums); }).find("sums for 3 cut-offs"), std::string::npos);
}

TEST(Metrics, HandComputed) {
  RankingMetrics m({1, 3});
  m.add(0);  // top: hit@1, hit@3, ndcg 1, rr 1
  m.add(2);  // third: hit@3, ndcg@3 = 1/log2(4) = 0.5, rr 1/3
  m.add(9);  // miss, rr 0.1
  EXPECT_EQ(m.count(), 3u);
  EXPECT_DOUBLE_EQ(m.hit_rate(1), 1.0 / 3);
  EXPECT_DOUBLE_EQ(m.hit_rate(3), 2.0 / 3);
  EXPECT_DOUBLE_EQ(m.ndcg(1), 1.0 / 3);
  EXPECT_DOUBLE_EQ(m.ndcg(3), (1.0 + 0.5) / 3);
  EXPECT_DOUBLE_EQ(m.mrr(), (1.0 + 1.0 / 3 + 0.1) / 3);
  RankingMetrics other({1, 3});
  other.add(1);  // second: ndcg@3 = 1/log2(3)
  m.merge(other);
  EXPECT_DOUBLE_EQ(m.ndcg(3), (1.0 + 0.5 + 1.0 / std::log2(3.0)) / 4);
  EXPECT_NE(m.to_json().find("\"NDCG@3\""), std::string::npos);
  EXPECT_THROW(m.add(-1), std::invalid_argument);
  EXPECT_THROW(RankingMetrics({0}), std::invalid_argument);
}

// ---- stream sources and history store ----------------------------------------------------------

#include "engine/stream/history_store.h"
#include "engine/stream/sources.h"

TEST(StreamSources, BadEventsGetReasons) {
  std::string error;
  EXPECT_TRUE(parse_stream_line("u1,i2,1700000000", LineFormat::Csv, error));
  EXPECT_TRUE(parse_stream_line(R"({"user": "u1", "item": 7, "timestamp": 1700000000})", LineFormat::Json, error));
  const std::vector<std::pair<std::string, LineFormat>> bad = {
      {"u1", LineFormat::Csv},                                  // too few fields
      {"u1,i2,soon", LineFormat::Csv},                          // bad timestamp
      {"-4,i2", LineFormat::Csv},                               // negative id
      {"u1,i2,1700000000000", LineFormat::Csv},                 // milliseconds: absurd
      {"u1,i2,-5", LineFormat::Csv},                            // before 1970
      {"u1,i2,1,2,3", LineFormat::Csv},                         // too many fields
      {R"({"user": "u1"})", LineFormat::Json},                  // missing item
      {R"({"user": "u1", "item": 2, "color": 1})", LineFormat::Json},  // unknown field
      {R"({"user": -1, "item": 2})", LineFormat::Json},         // negative id
      {R"({"user": "u1", "item": [2]})", LineFormat::Json},     // wrong type
      {R"({"user": "u1", )", LineFormat::Json},                 // broken JSON
      {"[1, 2]", LineFormat::Json},                             // not an object
  };
  for (const auto& [line, format] : bad) {
    error.clear();
    EXPECT_FALSE(parse_stream_line(line, format, error)) << line;
    EXPECT_FALSE(error.empty()) << line;
  }
  error.clear();
  parse_stream_line(R"({"user": "u1", "item": 2, "color": 1})", LineFormat::Json, error);
  EXPECT_NE(error.find("unknown field 'color'"), std::string::npos) << error;
}

TEST(StreamSources, AnyBytesBecomeAnEventOrALosslessDeadLetter) {
  // Poison lines of each format (invalid UTF-8, a number beyond a double, ids with control characters
  // or too long, a NaN timestamp, a NUL byte), then one good line. None may throw, only the good line
  // is an event, and each dead letter keeps the line's bytes.
  const std::vector<std::string> csv = {
      "\xff\xfe,1,1700000000", "u1,\xc3\x28", "u1," + std::string(300, 'x'), "u1,i2,nan", "u1,i2,1e400",
      std::string("u1,i\0,5", 7), "u1,\xc2\x85", "u1,i2,1700000000",
  };
  const std::vector<std::string> json = {
      "{\"user\": 1e400, \"item\": 2}",
      "{\"user\": \"a\\nb\", \"item\": 2}",
      "{\"user\": \"a\\u0000b\", \"item\": 2}",
      "{\"user\": \"u\", \"item\": \"\xff\"}",
      "{\"user\": \"u\", \"item\": 2, \"timestamp\": 1e999}",
      "\xff{}",
      "{\"user\": \"u\", \"item\": 2, \"timestamp\": 1700000000}",
  };
  for (const auto& [lines, format] : {std::make_pair(csv, LineFormat::Csv), std::make_pair(json, LineFormat::Json)}) {
    std::string text;
    for (const auto& line : lines) text += line + "\n";
    std::istringstream in(text);
    LineStreamSource source(in, format);
    size_t records = 0, events = 0;
    while (auto r = source.next(-1)) {
      ++records;
      if (r->event) {
        ++events;
        EXPECT_EQ(r->position, lines.size() - 1);
        continue;
      }
      const std::string line = dead_letter_json(*r);
      const auto j = nlohmann::json::parse(line);  // valid JSON, whatever the bytes
      EXPECT_EQ(j.at("position").get<uint64_t>(), r->position);
      const std::string kept = j.contains("text_base64") ? base64_decode(j.at("text_base64").get<std::string>())
                                                         : j.at("text").get<std::string>();
      EXPECT_EQ(kept, r->text) << line;  // lossless
      EXPECT_TRUE(is_valid_utf8(j.at("reason").get<std::string>())) << line;
    }
    EXPECT_EQ(records, lines.size());
    EXPECT_EQ(events, 1u);
  }
}

TEST(Ids, OneRuleAndSafeRenderings) {
  for (const char* good : {"1193", "u-1", "Café", "a b", "[x]", "\"quoted\"", "日本"}) EXPECT_EQ(id_problem(good), "") << good;
  EXPECT_NE(id_problem(""), "");
  EXPECT_NE(id_problem("-3"), "");
  EXPECT_NE(id_problem(" x"), "");
  EXPECT_NE(id_problem("a\nb"), "");
  EXPECT_NE(id_problem("a\x7f"), "");
  EXPECT_NE(id_problem("\xc2\x85"), "");      // U+0085, a C1 control
  EXPECT_NE(id_problem("\xc0\xaf"), "");      // overlong '/'
  EXPECT_NE(id_problem("\xed\xa0\x80"), "");  // a surrogate
  EXPECT_NE(id_problem(std::string(kMaxIdBytes + 1, 'x')), "");
  EXPECT_EQ(id_problem(std::string(kMaxIdBytes, 'x')), "");
  EXPECT_EQ(printable("ok\xff\n"), "ok\\xFF\\x0A");
  EXPECT_TRUE(is_valid_utf8(printable("\xc3\x28\xf0\x28\x8c\xbc")));
  std::string all;
  for (int b = 0; b < 256; ++b) all += static_cast<char>(b);
  for (size_t n = 0; n < 5; ++n) EXPECT_EQ(base64_decode(base64_encode(all.substr(0, 250 + n))), all.substr(0, 250 + n));
  EXPECT_EQ(base64_encode("foob"), "Zm9vYg==");
  EXPECT_THROW(base64_decode("abc"), std::invalid_argument);
}

TEST(Ids, IdMapsRoundTripAnyValidIdAndReadTheLineForm) {
  IdMap map(1);
  for (const char* id : {"1", "a,b", "[", "x\"y", "Café", "tab\tno"}) {
    if (id_problem(id).empty()) map.intern(id);
  }
  const IdMap back = IdMap::deserialize(map.serialize(), 1);
  ASSERT_EQ(back.size(), map.size());
  for (int32_t i = map.first_id(); i < map.end_id(); ++i) EXPECT_EQ(back.external(i), map.external(i));
  const IdMap legacy = IdMap::deserialize("10\n20\n30\n", 0);  // the one-id-a-line form
  EXPECT_EQ(legacy.size(), 3u);
  EXPECT_EQ(legacy.find("20"), 1);
  EXPECT_NE(error_of([] { IdMap::deserialize(R"(["a", "a"])", 0); }).find("duplicate"), std::string::npos);
  EXPECT_NE(error_of([] { IdMap::deserialize(R"(["a", 3])", 0); }).find("not a string"), std::string::npos);
  EXPECT_NE(error_of([] { IdMap::deserialize(R"(["a\nb"])", 0); }).find("not a valid id"), std::string::npos);
}

TEST(Readers, BadBytesInIdsAreCountedWithPrintableMessages) {
  TempDir dir;
  const auto path = dir.write("log.csv", "user,item\nu1,i1\nu\xff,i2\nu2,i\x01x\nu3,i3\n");
  ReaderOptions o = options_for(LogFormat::Csv);
  ReadReport report;
  const EventLog log = read_event_log(path, o, &report);
  EXPECT_EQ(log.events.size(), 2u);
  EXPECT_EQ(report.error_count(), 2u);
  for (const auto& example : report.examples) {
    EXPECT_TRUE(is_valid_utf8(example)) << example;
    EXPECT_NE(example.find("is not a valid id"), std::string::npos) << example;
  }
}

TEST(StreamSources, StdinLinesKeepPositionsAndSkip) {
  std::istringstream in("u1,a,10\n\nbroken\nu2,b,20\nu1,c,30\n");
  LineStreamSource source(in, LineFormat::Csv);
  source.seek("1");  // resume after the first event
  auto r = source.next();
  ASSERT_TRUE(r);
  EXPECT_EQ(r->position, 1u);
  EXPECT_FALSE(r->event);
  EXPECT_EQ(r->text, "broken");
  r = source.next();
  EXPECT_EQ(r->event->user, "u2");
  source.next();
  EXPECT_FALSE(source.next());
  EXPECT_TRUE(source.finished());
  EXPECT_EQ(source.position().substr(0, 2), "4:");
  EXPECT_THROW(source.seek("x"), DataError);
}

TEST(StreamSources, StdinResumeChecksThatTheProducerReplayedFromTheStart) {
  const std::string sent = "u1,a,10\nu2,b,20\n\nu3,c,30\nu4,d,40\n";
  std::istringstream first(sent);
  LineStreamSource before(first, LineFormat::Csv);
  before.next(), before.next(), before.next();  // three events consumed, then a checkpoint
  const std::string saved = before.position();
  EXPECT_EQ(saved.substr(0, 2), "3:");

  std::istringstream again(sent);  // the contract: the same input from its start
  LineStreamSource replayed(again, LineFormat::Csv);
  replayed.seek(saved);
  auto r = replayed.next();
  ASSERT_TRUE(r && r->event);
  EXPECT_EQ(r->event->user, "u4");

  std::istringstream unread("u4,d,40\nu5,e,50\nu6,f,60\n");  // only the unread lines, then new ones
  LineStreamSource resent(unread, LineFormat::Csv);
  EXPECT_NE(error_of([&] { resent.seek(saved); }).find("not the ones the checkpoint consumed"), std::string::npos);

  std::istringstream changed("u1,a,10\nu2,X,20\nu3,c,30\nu4,d,40\n");  // same count, other lines
  LineStreamSource altered(changed, LineFormat::Csv);
  EXPECT_THROW(altered.seek(saved), DataError);

  std::istringstream shorter("u1,a,10\n");  // ends before the saved position: a warning, nothing new
  LineStreamSource cut(shorter, LineFormat::Csv);
  EXPECT_NO_THROW(cut.seek(saved));
  EXPECT_TRUE(cut.finished());
  EXPECT_FALSE(cut.next());

  std::istringstream legacy(sent);  // a bare count, as checkpoints without a digest hold
  LineStreamSource old(legacy, LineFormat::Csv);
  old.seek("3");
  EXPECT_EQ(old.next()->event->user, "u4");
}

TEST(StreamSources, ReplayIsInTimeOrderWithQuantileCut) {
  TempDir dir;
  const auto path = dir.write("r.dat", "1::10::5::300\n2::11::4::100\nbad line\n1::12::3::200\n3::13::3::400\n");
  const ReplaySource source = ReplaySource::from_file(path, options_for(LogFormat::MovielensDat));
  const auto& r = source.records();
  ASSERT_EQ(r.size(), 5u);
  EXPECT_EQ(r[0].event->item, "11");  // t=100
  EXPECT_FALSE(r[1].event);           // the bad line (line 3) follows its file predecessor (t=100)
  EXPECT_NE(r[1].origin.find(":3"), std::string::npos) << r[1].origin;
  EXPECT_EQ(r[2].event->item, "12");  // t=200
  EXPECT_EQ(r[3].event->item, "10");  // t=300
  EXPECT_EQ(r[4].event->item, "13");  // t=400
  for (size_t i = 0; i < r.size(); ++i) EXPECT_EQ(r[i].position, i);
  EXPECT_EQ(source.quantile_position(0.5), 2u);  // cut at t=200: the first two records are history
  EXPECT_EQ(source.quantile_position(0), 0u);
}

TEST(HistoryStore, KeepsTheLastItemsAndRoundTrips) {
  HistoryStore store(3);
  bool created = false;
  const int32_t a = store.user_slot("alice", &created);
  EXPECT_TRUE(created);
  for (int32_t item : {1, 2, 3, 4}) store.push(a, item);
  const int32_t b = store.user_slot("bob");
  store.push(b, 9);
  EXPECT_EQ(store.user_slot("alice", &created), a);
  EXPECT_FALSE(created);
  // Within a micro-batch nothing is cut, so an event's history stays (slot, length at arrival).
  EXPECT_EQ(store.history(a), (std::vector<int32_t>{1, 2, 3, 4}));
  EXPECT_EQ(store.lengths(), (std::vector<int64_t>{3, 1}));  // a checkpoint sees the kept window anyway
  EXPECT_EQ(store.flat_items(), (std::vector<int64_t>{2, 3, 4, 9}));
  store.settle();
  EXPECT_EQ(store.history(a), (std::vector<int32_t>{2, 3, 4}));
  EXPECT_EQ(store.history(b), (std::vector<int32_t>{9}));
  const HistoryStore back = HistoryStore::restore(3, store.serialize_users(), store.lengths(), store.flat_items());
  EXPECT_EQ(back.history(back.user_ids().find("alice")), (std::vector<int32_t>{2, 3, 4}));
  EXPECT_EQ(back.history(back.user_ids().find("bob")), (std::vector<int32_t>{9}));
  EXPECT_THROW(HistoryStore::restore(3, store.serialize_users(), {1}, {1}), std::runtime_error);
  // A smaller keep cuts a restored store to each user's newest items.
  const HistoryStore cut = HistoryStore::restore(2, store.serialize_users(), store.lengths(), store.flat_items());
  EXPECT_EQ(cut.history(cut.user_ids().find("alice")), (std::vector<int32_t>{3, 4}));
  // A settled user is cut again at the next settle() only if pushed to.
  store.push(a, 5);
  store.settle();
  EXPECT_EQ(store.history(a), (std::vector<int32_t>{3, 4, 5}));
  EXPECT_EQ(store.history(b), (std::vector<int32_t>{9}));
}

TEST(HistoryStore, KeepZeroKeepsEveryItem) {
  HistoryStore store(0);
  const int32_t a = store.user_slot("alice");
  for (int32_t item = 1; item <= 1000; ++item) store.push(a, item);
  ASSERT_EQ(store.history(a).size(), 1000u);
  EXPECT_EQ(store.history(a).front(), 1);
  EXPECT_EQ(store.history(a).back(), 1000);
  const HistoryStore back = HistoryStore::restore(0, store.serialize_users(), store.lengths(), store.flat_items());
  EXPECT_EQ(back.history(a), store.history(a));
}
