// Seeded random inputs against every parser of untrusted text: the readers' line parser (each
// format), the stream's CSV / JSON lines and their dead letters, the config loader, stored id maps
// and saved metrics. Each may only answer with its own error type, never crash; the sanitizer build
// (tools/sanitize-check.sh) runs it under AddressSanitizer and UndefinedBehaviorSanitizer.
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <random>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/data/ids.h"
#include "engine/data/readers.h"
#include "engine/eval/metrics.h"
#include "engine/stream/sources.h"

using namespace freshrec;

namespace {

// Valid samples of each input, and fragments that tend to break parsers.
const std::vector<std::string> kSamples = {
    "1::1193::5::978300760", "1,31,2.5,1260759144", "196\t242\t3\t881250949", "1 10",
    "u1,i2,1700000000,4", R"({"user": "u1", "item": 7, "timestamp": 1700000000, "rating": 4})",
    "user_id:token\titem_id:token\trating:float\ttimestamp:float", "userId,movieId,rating,timestamp",
    "data:\n  format: csv\n  path: log.csv\nmodel:\n  hidden: 64\n  maxlen: 50\neval:\n  ks: [1, 10]\n",
    R"({"ks":[10],"count":3,"reciprocal_rank":1.5,"hits":[2],"ndcg":[1.2]})", R"(["1","2","x"])", "10\n20\n30\n"};
const std::vector<std::string> kFragments = {
    "1e400", "-1e400", "nan", "inf", "-", "::", ",", "\t", "{", "}", "[", "]", "\"", "\\", "\\u0000", "\\ud800",
    std::string(1, '\0'), "\xff", "\xc3\x28", "\xed\xa0\x80", "\n", "\r", "99999999999999999999999999", "0x10", " ",
    ": ", "- ", "&a", "*a", "!!binary", "? ", "%YAML 1.2", "model.hidden", "1.5", "true", "null"};

std::string mutate(std::mt19937_64& rng, std::string text) {
  const int edits = std::uniform_int_distribution<int>(1, 6)(rng);
  for (int e = 0; e < edits; ++e) {
    const size_t at = text.empty() ? 0 : std::uniform_int_distribution<size_t>(0, text.size())(rng);
    switch (std::uniform_int_distribution<int>(0, 3)(rng)) {
      case 0: text.insert(at, kFragments[rng() % kFragments.size()]); break;
      case 1: text.insert(at, 1, static_cast<char>(rng() & 0xff)); break;
      case 2:
        if (!text.empty()) text.erase(std::min(at, text.size() - 1), 1 + rng() % 4);
        break;
      default: text.replace(std::min(at, text.size()), 0, text.substr(0, rng() % (text.size() + 1))); break;
    }
  }
  return text;
}

constexpr int kRounds = 20000;

}  // namespace

TEST(Fuzz, LineParsersAnswerEveryInputWithAnEventOrAReason) {
  std::mt19937_64 rng(20261130);
  const LogFormat formats[] = {LogFormat::Sasrec, LogFormat::MovielensDat, LogFormat::MovielensCsv,
                               LogFormat::MovielensUdata, LogFormat::Recbole, LogFormat::Csv};
  for (int round = 0; round < kRounds; ++round) {
    const std::string line = mutate(rng, kSamples[rng() % kSamples.size()]);
    for (LogFormat format : formats) {
      ReaderOptions options;
      options.format = format;
      options.header = rng() % 2;
      if (!options.header) options.user_column = "0", options.item_column = std::to_string(rng() % 4);
      LineParser parser(options);
      try {
        if (parser.expects_header()) parser.read_header(mutate(rng, kSamples[rng() % kSamples.size()]), "fuzz:1");
      } catch (const DataError&) {
        continue;  // a header without the needed columns is always an error
      }
      std::string reason, detail;
      const auto event = parser.parse(line, reason, detail);
      if (event) {
        ASSERT_EQ(id_problem(event->user), "") << line;
        ASSERT_EQ(id_problem(event->item), "") << line;
      } else {
        ASSERT_FALSE(detail.empty()) << line;
        ASSERT_TRUE(is_valid_utf8(detail)) << line;
      }
    }
    for (LineFormat format : {LineFormat::Csv, LineFormat::Json}) {
      StreamRecord record;
      record.text = line;
      record.origin = "fuzz:" + std::to_string(round);
      record.event = parse_stream_line(line, format, record.error);
      if (record.event) continue;
      ASSERT_FALSE(record.error.empty()) << line;
      const auto letter = nlohmann::json::parse(dead_letter_json(record));  // valid JSON, whatever the bytes
      const std::string kept = letter.contains("text_base64") ? base64_decode(letter.at("text_base64").get<std::string>())
                                                              : letter.at("text").get<std::string>();
      ASSERT_EQ(kept, line);
    }
  }
}

TEST(Fuzz, StoredTextIsLoadedOrRefusedWithItsOwnError) {
  std::mt19937_64 rng(7);
  Config config;
  for (int round = 0; round < kRounds; ++round) {
    const std::string text = mutate(rng, kSamples[rng() % kSamples.size()]);
    if (round % 8 == 0) {  // a whole config is the slowest to build: one round in eight
      try {
        Config::from_yaml_string(text, "fuzz.yaml");
      } catch (const ConfigError&) {
      }
    }
    try {
      config.apply_override("model.hidden=" + text);
    } catch (const ConfigError&) {
    }
    try {
      IdMap::deserialize(text, 1);
    } catch (const std::runtime_error&) {
    }
    try {
      RankingMetrics::from_state(text);
    } catch (const std::invalid_argument&) {
    }
  }
}
