// Torch-free tests of the tools around the engine: the configuration reference (docs/CONFIG.md must
// be what the schema renders), run charts from metrics.jsonl / history.jsonl, data preparation, and
// durable writes.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/resource.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "engine/config/config.h"
#include "engine/data/prepare.h"
#include "engine/data/readers.h"
#include "engine/io/atomic_file.h"
#include "engine/io/remove_tree.h"
#include "engine/report/run_charts.h"
#include "engine/report/svg_chart.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using namespace freshrec;
using freshrec::testing_support::error_of;
using freshrec::testing_support::TempDir;

namespace {

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

size_t count_of(const std::string& text, const std::string& needle) {
  size_t n = 0;
  for (size_t at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size())) ++n;
  return n;
}

// The polylines of an SVG document: each one's <title> and its points.
std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> polylines(const std::string& svg) {
  std::vector<std::pair<std::string, std::vector<std::pair<double, double>>>> out;
  const std::regex line(R"re(<polyline[^>]* points="([^"]*)"><title>([^<]*)</title>)re");
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), line); it != std::sregex_iterator(); ++it) {
    std::vector<std::pair<double, double>> points;
    std::istringstream in((*it)[1].str());
    double x, y;
    char comma;
    while (in >> x >> comma >> y) points.emplace_back(x, y);
    out.emplace_back((*it)[2].str(), points);
  }
  return out;
}

std::string metrics_line(long events, const std::string& label, double ndcg, const std::string& student) {
  return "{\"label\":\"" + label + "\",\"events\":" + std::to_string(events) + ",\"NDCG@10\":" + std::to_string(ndcg) +
         ",\"HR@10\":0.3,\"student_NDCG@10\":" + student + "}\n";
}

}  // namespace

// ---- configuration reference -------------------------------------------------------------------

TEST(ConfigReference, CommittedFileIsWhatTheSchemaRenders) {
  const fs::path committed = fs::path(FRESHREC_SOURCE_DIR) / "docs" / "CONFIG.md";
  ASSERT_TRUE(fs::exists(committed)) << committed;
  EXPECT_TRUE(read_file(committed) == config_markdown())
      << "docs/CONFIG.md differs from the schema: run ./build/freshrec config --markdown > docs/CONFIG.md";
}

TEST(ConfigReference, EveryKeyHasASectionAndOneWellFormedRow) {
  const std::string md = config_markdown();
  for (const KeySpec& spec : config_schema()) {
    EXPECT_NE(config_section_of(spec.name), nullptr) << spec.name << " belongs to no section";
    EXPECT_EQ(count_of(md, "| `" + spec.name + "` |"), 1u) << spec.name;
  }
  // Each table row has exactly five unescaped '|' (four cells), whatever the help text holds.
  std::istringstream lines(md);
  for (std::string row; std::getline(lines, row);) {
    if (row.rfind("| `", 0) != 0) continue;
    size_t bars = 0;
    for (size_t i = 0; i < row.size(); ++i) bars += row[i] == '|' && (i == 0 || row[i - 1] != '\\');
    EXPECT_EQ(bars, 5u) << row;
  }
  EXPECT_EQ(config_section_of("stream.kafka.topic")->prefix, "stream.kafka");  // the longest prefix wins
  EXPECT_EQ(config_section_of("stream.lr")->prefix, "stream");
  EXPECT_EQ(config_section_of("nothing.here"), nullptr);
}

// ---- charts ------------------------------------------------------------------------------------

TEST(Charts, TicksAreRoundAndCoverTheRange) {
  const auto ticks = nice_ticks(0.013, 0.231);
  ASSERT_GE(ticks.size(), 3u);
  EXPECT_LE(ticks.front(), 0.013);
  EXPECT_GE(ticks.back(), 0.231);
  const double step = ticks[1] - ticks[0];
  EXPECT_NEAR(step, 0.05, 1e-12);
  for (size_t i = 1; i < ticks.size(); ++i) EXPECT_NEAR(ticks[i] - ticks[i - 1], step, 1e-12);
  EXPECT_EQ(nice_ticks(0, 37748).back(), 40000);
  EXPECT_FALSE(nice_ticks(5, 5).empty());  // a flat series still gets an axis
}

TEST(Charts, StreamChartHasOneLinePerRunAndTheStudent) {
  TempDir dir;
  std::string frozen, continual;
  for (long e : {4000, 8000, 12000}) {
    frozen += metrics_line(e, "frozen", 0.20 - e * 1e-6, "null");
    continual += metrics_line(e, "continual", 0.21 + e * 1e-6, std::to_string(0.19 + e * 1e-6));
  }
  dir.write("frozen/metrics.jsonl", frozen);
  dir.write("continual/metrics.jsonl", continual);
  dir.write("teacher/history.jsonl",
            "{\"epoch\":1,\"loss\":6.5,\"validation\":{\"NDCG@10\":0.05}}\n"
            "{\"epoch\":2,\"loss\":5.9,\"validation\":{\"NDCG@10\":0.09}}\n"
            "{\"epoch\":2,\"loss\":5.8,\"validation\":{\"NDCG@10\":0.10}}\n"  // a resumed run repeats epoch 2
            "{\"epoch\":3,\"loss\":null,\"validation\":{\"NDCG@10\":0.12}}\n");  // a non-finite loss
  const auto written = write_run_charts(dir.path().string());
  ASSERT_EQ(written.size(), 2u);
  const std::string stream = read_file(dir.path() / "stream.svg");
  EXPECT_EQ(stream.rfind("<svg", 0), 0u);
  EXPECT_NE(stream.find("</svg>"), std::string::npos);
  const auto lines = polylines(stream);
  ASSERT_EQ(lines.size(), 3u);
  std::vector<std::string> names;
  for (const auto& [name, points] : lines) {
    names.push_back(name);
    EXPECT_EQ(points.size(), 3u) << name;
    for (const auto& [x, y] : points) {  // inside the 760 x 340 picture
      EXPECT_GT(x, 0);
      EXPECT_LT(x, 760);
      EXPECT_GT(y, 0);
      EXPECT_LT(y, 340);
    }
  }
  EXPECT_EQ(names, (std::vector<std::string>{"continual", "student (continual)", "frozen"}));
  // Rising NDCG draws upward (smaller y), falling downward.
  EXPECT_LT(lines[0].second.back().second, lines[0].second.front().second);
  EXPECT_GT(lines[2].second.back().second, lines[2].second.front().second);

  const auto training = training_charts(dir.path().string());
  ASSERT_EQ(training.size(), 2u);  // validation NDCG@10, then loss
  ASSERT_EQ(training[0].series.size(), 1u);
  EXPECT_EQ(training[0].series[0].name, "teacher");
  ASSERT_EQ(training[0].series[0].points.size(), 3u);  // epochs 1, 2, 3: the repeated epoch once
  EXPECT_DOUBLE_EQ(training[0].series[0].points[1].second, 0.10);  // its last line wins
  const auto training_lines = polylines(read_file(dir.path() / "training.svg"));
  ASSERT_EQ(training_lines.size(), 2u);
  EXPECT_EQ(training_lines[0].second.size(), 3u);
  EXPECT_EQ(training_lines[1].second.size(), 2u);  // the null loss is left out
}

TEST(Charts, BadFilesAreErrorsNamingTheLine) {
  TempDir dir;
  EXPECT_NE(error_of([&] { write_run_charts(dir.path().string()); }).find("no metrics.jsonl"), std::string::npos);
  EXPECT_NE(error_of([&] { write_run_charts((dir.path() / "missing").string()); }).find("not a folder"),
            std::string::npos);
  dir.write("metrics.jsonl", metrics_line(10, "a<b & \\\"c\\\"", 0.1, "null") + "{not json\n");
  EXPECT_NE(error_of([&] { write_run_charts(dir.path().string()); }).find("metrics.jsonl:2: not a JSON object"),
            std::string::npos);
  dir.write("metrics.jsonl", metrics_line(10, "a<b & \\\"c\\\"", 0.1, "null") + metrics_line(20, "x", 0.2, "null"));
  write_run_charts(dir.path().string());
  const std::string svg = read_file(dir.path() / "stream.svg");
  EXPECT_NE(svg.find("a&lt;b &amp; &quot;c&quot;"), std::string::npos);  // labels are escaped
  EXPECT_EQ(svg.find("a<b"), std::string::npos);
  dir.write("history.jsonl", "{\"loss\":1}\n");
  EXPECT_NE(error_of([&] { training_charts(dir.path().string()); }).find("history.jsonl:1: no numeric \"epoch\""),
            std::string::npos);
}

// ---- data preparation --------------------------------------------------------------------------

TEST(Prepare, KeepsTheLinesOfAUserRangeAsTheyWere) {
  TempDir dir;
  const std::string text =
      "1::10::5::978300760\n1::11::3::978300761\n2::10::4::978300762\n"
      "2::12::1::978300763\r\n"  // a CRLF line keeps its content
      "3::10::5::978300764\n\n10::11::2::978300765\n";
  const std::string input = dir.write("ratings.dat", text);
  ReaderOptions reader;
  reader.format = LogFormat::MovielensDat;
  PrepareOptions options;
  options.users = parse_id_range("2-3");
  const std::string out = (dir.path() / "sub" / "ratings.dat.gz").string();
  const PrepareReport r = prepare_log(input, reader, options, out);
  EXPECT_EQ(r.lines, 6u);
  EXPECT_EQ(r.kept, 3u);
  EXPECT_EQ(r.outside_users, 3u);
  EXPECT_EQ(read_lines(out), (std::vector<std::string>{"2::10::4::978300762", "2::12::1::978300763",
                                                        "3::10::5::978300764"}));
  // Read back by the same reader: the same events.
  ReadReport report;
  const EventLog log = read_event_log(out, reader, &report);
  EXPECT_EQ(log.events.size(), 3u);
  EXPECT_EQ(report.error_count(), 0u);
}

TEST(Prepare, MinimumCountsAreTakenBeforeEitherFilterAndHeadersStay) {
  TempDir dir;
  // Item 10: 3 events, item 11: 2, item 12: 1; user 1: 3 events, user 2: 2, user 3: 1.
  const std::string input = dir.write("ratings.csv",
                                      "userId,movieId,rating,timestamp\n1,10,5,1\n1,11,4,2\n1,12,3,3\n"
                                      "2,10,4,4\n2,11,2,5\n3,10,1,6\n");
  ReaderOptions reader;
  reader.format = LogFormat::MovielensCsv;
  PrepareOptions options;
  options.min_user_events = 2;
  options.min_item_events = 2;
  const std::string out = (dir.path() / "out.csv").string();
  const PrepareReport r = prepare_log(input, reader, options, out);
  EXPECT_EQ(r.few_user_events, 1u);  // user 3's only event
  EXPECT_EQ(r.few_item_events, 1u);  // item 12 (counted with user 3's events still in)
  EXPECT_EQ(read_file(out), "userId,movieId,rating,timestamp\n1,10,5,1\n1,11,4,2\n2,10,4,4\n2,11,2,5\n");
}

TEST(Prepare, BadInputIsAClearErrorAndWritesNothing) {
  TempDir dir;
  ReaderOptions reader;
  reader.format = LogFormat::MovielensDat;
  const std::string input = dir.write("ratings.dat", "1::10::5::1\nbroken line\n7::10::5::2\n");
  const std::string out = (dir.path() / "out.dat").string();
  ReaderOptions csv;  // string ids are valid there, but not with a numeric user range
  csv.format = LogFormat::Csv;
  const std::string named = dir.write("named.csv", "user,item\n1,10\nu7,10\n");
  PrepareOptions range;
  range.users = {1, 5};
  EXPECT_NE(error_of([&] { prepare_log(named, csv, range, out); }).find("named.csv:3: user id 'u7' is not an integer"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  ReaderOptions strict = reader;
  strict.strict = true;
  EXPECT_NE(error_of([&] { prepare_log(input, strict, {}, out); }).find("ratings.dat:2"), std::string::npos);
  const PrepareReport lenient = prepare_log(input, reader, {}, out);  // the malformed line is counted, not kept
  EXPECT_EQ(lenient.malformed, 1u);
  EXPECT_EQ(lenient.kept, 2u);
  fs::remove(out);
  PrepareOptions none;
  none.users = {100, 200};
  EXPECT_NE(error_of([&] { prepare_log(input, reader, none, out); }).find("no event passes the filters"),
            std::string::npos);
  EXPECT_FALSE(fs::exists(out));
  EXPECT_NE(error_of([&] { prepare_log(input, reader, {}, input); }).find("would overwrite the input"),
            std::string::npos);
  EXPECT_EQ(read_lines(input).size(), 3u);  // the input is untouched
  EXPECT_NE(error_of([&] { prepare_log(dir.write("empty.dat", "\n\n"), reader, {}, out); }).find("empty file"),
            std::string::npos);
  for (const char* bad : {"5", "3-1", "a-b", "1-", "-"})
    EXPECT_NE(error_of([&] { parse_id_range(bad); }).find("expected FIRST-LAST"), std::string::npos) << bad;
  EXPECT_EQ(parse_id_range("-5-5"), (std::pair<int64_t, int64_t>(-5, 5)));
  for (const auto& entry : fs::directory_iterator(dir.path()))  // no temporary file left behind
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

// ---- durable writes ----------------------------------------------------------------------------

TEST(DurableWrites, AFailedWriteIsAnErrorNamingTheFileAndTheOldFileStays) {
  TempDir dir;
  const std::string path = (dir.path() / "state.json").string();
  write_file_atomically(path, "old");
  // A file-size limit fails write(2) as a full disk does (EFBIG instead of ENOSPC).
  rlimit saved{};
  ASSERT_EQ(getrlimit(RLIMIT_FSIZE, &saved), 0);
  const auto previous_handler = signal(SIGXFSZ, SIG_IGN);
  rlimit limit{4096, saved.rlim_max};
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &limit), 0);
  const std::string error = error_of([&] { write_file_atomically(path, std::string(100000, 'x')); });
  const std::string streamed = error_of([&] {
    save_atomically(path, [](std::ostream& out) {
      for (int i = 0; i < 1000; ++i) out << std::string(1000, 'y');  // a writer that never checks its stream
    });
  });
  setrlimit(RLIMIT_FSIZE, &saved);
  signal(SIGXFSZ, previous_handler);
  EXPECT_NE(error.find("state.json: cannot write: File too large"), std::string::npos) << error;
  EXPECT_NE(streamed.find("state.json: cannot write: File too large"), std::string::npos) << streamed;
  EXPECT_EQ(read_file(path), "old");
  EXPECT_NE(error_of([&] { save_atomically(path, [](std::ostream&) { throw std::runtime_error("writer failed"); }); })
                .find("writer failed"),
            std::string::npos);
  EXPECT_EQ(read_file(path), "old");
  for (const auto& entry : fs::directory_iterator(dir.path()))
    EXPECT_EQ(entry.path().filename().string().find(".tmp."), std::string::npos) << entry.path();
}

// A folder tree goes with everything in it; a link inside it goes, what it points to stays.
TEST(RemoveTree, RemovesNestedFoldersAndLinksButNotWhatTheyPointTo) {
  TempDir dir;
  const fs::path tree = dir.path() / "tree", outside = dir.path() / "outside";
  fs::create_directories(tree / "a" / "b");
  fs::create_directories(outside);
  write_file_atomically((tree / "a" / "b" / "deep.txt").string(), "x");
  write_file_atomically((tree / "top.txt").string(), "y");
  write_file_atomically((outside / "keep.txt").string(), "z");
  fs::create_directory_symlink(outside, tree / "a" / "link");
  fs::create_symlink(tree / "nowhere", tree / "dangling");
  remove_tree((tree / "a" / "link").string() + "/");  // the link named with a trailing slash: the link goes
  EXPECT_FALSE(fs::exists(fs::symlink_status(tree / "a" / "link")));
  EXPECT_EQ(read_file((outside / "keep.txt").string()), "z");
  fs::create_directory_symlink(outside, tree / "a" / "link");
  remove_tree(tree.string());
  EXPECT_FALSE(fs::exists(fs::symlink_status(tree)));
  EXPECT_EQ(read_file((outside / "keep.txt").string()), "z");
  EXPECT_NO_THROW(remove_tree(tree.string()));  // already gone: nothing to do
  remove_tree((outside / "keep.txt").string());  // a plain file
  EXPECT_FALSE(fs::exists(outside / "keep.txt"));
  write_file_atomically((outside / "file").string(), "w");
  const std::string error = error_of([&] { remove_tree((outside / "file" / "below").string()); });
  EXPECT_NE(error.find("file/below: cannot remove: Not a directory"), std::string::npos) << error;
}
