// Fine-tuning from pre-trained weights: importing a model saved from Python (state_dict and
// safetensors) with the same scores, the refusals of sources that do not fit, the alignment of item
// rows by external id and what each finetune.train mode trains, and the command-line path
// (train, fine-tune on other data, export, fine-tune from the export).
#include <gtest/gtest.h>
#include <torch/torch.h>
#include <torch/serialize.h>
#include <caffe2/serialize/inline_container.h>

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "engine/checkpoint/checkpoint.h"
#include "engine/config/config.h"
#include "engine/export/torchscript.h"
#include "engine/finetune/finetune.h"
#include "engine/finetune/pretrained.h"
#include "engine/finetune/safetensors.h"
#include "engine/finetune/state_dict.h"
#include "models/sasrec.h"
#include "tests/test_support.h"

namespace fs = std::filesystem;
using namespace freshrec;
using namespace freshrec::testing_support;

namespace {

void write_text(const std::string& path, const std::string& text) { std::ofstream(path, std::ios::binary) << text; }

SASRecOptions options(int64_t items, int64_t heads = 2) {
  SASRecOptions o;
  o.num_items = items, o.hidden = 16, o.blocks = 2, o.heads = heads, o.dropout = 0, o.maxlen = 12;
  return o;
}

IdMap ids_of(const std::vector<std::string>& ids) {
  IdMap m(1);
  for (const auto& id : ids) m.intern(id);
  return m;
}

std::vector<std::string> numbered(const std::string& prefix, int n) {
  std::vector<std::string> out;
  for (int i = 1; i <= n; ++i) out.push_back(prefix + std::to_string(i));
  return out;
}

// A state_dict file as torch.save writes it, with `model`'s parameters under `rename(name)`.
void save_state_dict(SASRec& model, const std::string& path,
                     const std::function<std::string(const std::string&)>& rename = [](const std::string& n) { return n; }) {
  c10::Dict<std::string, torch::Tensor> dict;
  for (const auto& p : model->named_parameters()) dict.insert(rename(p.key()), p.value().detach().clone());
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  std::ofstream(path, std::ios::binary).write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

void write_ids(const std::string& path, const std::vector<std::string>& ids) {
  std::string text;
  for (const auto& id : ids) text += id + "\n";
  write_text(path, text);
}

torch::Tensor scores_of(SASRec& model, const torch::Tensor& histories) {
  torch::NoGradGuard no_grad;
  model->eval();
  return model->score_all(model->last_hidden(histories));
}

// `model`'s parameters set to `plain`'s plain ones (its adapters, where it has them, left as they are).
void copy_plain_parameters(SASRec& plain, SASRec& model) {
  torch::NoGradGuard no_grad;
  auto params = model->named_parameters();
  for (const auto& [name, weight] : plain->plain_parameters()) params[name].copy_(weight);
}

// The exported TorchScript's scores of items 1..items for each left-padded row of `histories`.
torch::Tensor exported_scores(torch::jit::Module& exported, const torch::Tensor& histories, int64_t items) {
  c10::List<c10::List<int64_t>> rows, candidates;
  for (int64_t r = 0; r < histories.size(0); ++r) {
    c10::List<int64_t> row, every;
    for (int64_t t = 0; t < histories.size(1); ++t)
      if (histories[r][t].item<int64_t>()) row.push_back(histories[r][t].item<int64_t>());
    for (int64_t i = 1; i <= items; ++i) every.push_back(i);
    rows.push_back(row), candidates.push_back(every);
  }
  return exported.get_method("score")({rows, candidates}).toTensor();
}

}  // namespace

// A model saved from Python (tools/bench/sasrec_reference.py's SASRec, torch.save(state_dict) and
// safetensors) imports with the same scores, within 1e-5, on histories with padding; with the
// catalogue in another order each item keeps its own score.
TEST(Finetune, APyTorchStateDictImportsWithTheSameScores) {
  const std::string python = std::string(FRESHREC_SOURCE_DIR) + "/.venv/bin/python";
  if (!fs::exists(python)) GTEST_SKIP() << "no Python with torch at " << python << " (tools/quickstart.sh makes it)";
  const TempDir scratch;
  const std::string dir = scratch.path().string();
  const std::string command = python + " " + FRESHREC_SOURCE_DIR + "/tests/finetune_reference.py " + dir + " 2>/dev/null";
  ASSERT_EQ(std::system(command.c_str()), 0) << command;

  std::vector<std::vector<int64_t>> rows = nlohmann::json::parse(std::ifstream(dir + "/histories.json"));
  std::vector<std::vector<float>> expected = nlohmann::json::parse(std::ifstream(dir + "/scores.json"));
  std::vector<int64_t> flat;
  for (const auto& r : rows) flat.insert(flat.end(), r.begin(), r.end());
  const auto histories = torch::tensor(flat, torch::kLong).view({static_cast<int64_t>(rows.size()), -1});

  for (const std::string file : {"state_dict.pt", "model.safetensors"}) {
    const PretrainedModel source = load_pretrained(dir + "/" + file, dir + "/ids.txt");
    EXPECT_EQ(source.hidden, 16);
    EXPECT_EQ(source.blocks, 2);
    EXPECT_EQ(source.maxlen, 12);
    ASSERT_EQ(source.item_ids.size(), 40u);
    EXPECT_EQ(source.item_ids[0], "movie-1");

    SASRec model(options(40));
    const IdMap catalogue = ids_of(source.item_ids);
    const Alignment a = align_to_catalogue(model, source, catalogue, "mean");
    EXPECT_EQ(a.known, 40);
    EXPECT_EQ(a.fresh, 0);
    const auto scores = scores_of(model, histories);
    for (size_t r = 0; r < expected.size(); ++r) {
      const auto want = torch::tensor(expected[r]);
      // Row 0 (padding) is not an item: compare the items' scores.
      EXPECT_LT((scores[r].narrow(0, 1, 40) - want.narrow(0, 1, 40)).abs().max().item<double>(), 1e-5) << file << " row " << r;
    }

    // The same items in reverse order: each item keeps its score.
    std::vector<std::string> reversed(source.item_ids.rbegin(), source.item_ids.rend());
    SASRec shuffled(options(40));
    align_to_catalogue(shuffled, source, ids_of(reversed), "mean");
    auto mapped = histories.clone();
    mapped.masked_scatter_(histories > 0, 41 - histories.masked_select(histories > 0));
    const auto again = scores_of(shuffled, mapped);
    for (int64_t item = 1; item <= 40; ++item)
      EXPECT_LT((again.select(1, 41 - item) - scores.select(1, item)).abs().max().item<double>(), 1e-5) << file << " item " << item;
  }
}

// The pickle torch.save writes for a state_dict, assembled opcode by opcode as Python's pickler emits
// it (protocol 2): an OrderedDict built by REDUCE, its items by SETITEMS, two tensors over one shared
// storage (the second a view at an offset), and the _metadata state set by BUILD. Also a BUILD whose
// state nests a million tuples deep, which is dropped without recursion.
TEST(Finetune, TorchSaveStateDictPicklesAreRead) {
  const TempDir scratch;
  const std::string dir = scratch.path().string();
  // Opcodes by name (protocol 2); every byte pushed one by one, so NULs stay.
  auto b = [](std::initializer_list<int> bytes) {
    std::string out;
    for (int v : bytes) out.push_back(static_cast<char>(v));
    return out;
  };
  auto text = [](const std::string& s) {  // BINUNICODE
    std::string out = "X";
    for (int i = 0; i < 4; ++i) out.push_back(static_cast<char>((s.size() >> (8 * i)) & 0xff));
    return out + s;
  };
  auto global = [](const std::string& module, const std::string& name) { return "c" + module + "\n" + name + "\n"; };
  auto put = [&](int n) { return b({'q', n}); };
  auto get = [&](int n) { return b({'h', n}); };
  auto k = [&](int n) { return b({'K', n}); };
  const std::string mark = "(", tuple = "t", empty_tuple = ")", reduce = "R", persid = "Q", newfalse = b({0x89});
  const std::string tuple1 = b({0x85}), tuple2 = b({0x86});
  // _rebuild_tensor_v2(storage '0' of 6 floats, offset, size, stride, False, OrderedDict())
  auto tensor = [&](int offset, const std::string& size, const std::string& stride) {
    return get(2) + mark + mark + text("storage") + get(3) + text("0") + text("cpu") + k(6) + tuple + persid + k(offset) +
           size + stride + newfalse + get(0) + empty_tuple + reduce + tuple + reduce;
  };
  std::string pickle = b({0x80, 2}) + global("collections", "OrderedDict") + put(0) + empty_tuple + reduce + put(1) + mark;
  pickle += text("w") + global("torch._utils", "_rebuild_tensor_v2") + put(2) + mark + mark + text("storage") +
            global("torch", "FloatStorage") + put(3) + text("0") + text("cpu") + k(6) + tuple + persid + k(0) + k(2) + k(3) +
            tuple2 + k(3) + k(1) + tuple2 + newfalse + get(0) + empty_tuple + reduce + tuple + reduce;
  const std::string view = tensor(2, k(2) + tuple1, k(1) + tuple1);
  pickle += text("v") + view + "u";
  pickle += "}" + text("_metadata") + get(0) + empty_tuple + reduce + mark + text("") + "}" + text("version") + k(1) + "s" +
            "u" + "s" + "b.";
  std::vector<float> values = {0, 1, 2, 3, 4, 5};
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir + "/sd.pt");
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeRecord("data/0", values.data(), values.size() * sizeof(float));
    writer.writeEndOfFile();
  }
  const auto sd = read_state_dict(dir + "/sd.pt");
  ASSERT_EQ(sd.size(), 2u);
  EXPECT_TRUE(torch::equal(sd.at("w"), torch::arange(6, torch::kFloat).view({2, 3})));
  EXPECT_TRUE(torch::equal(sd.at("v"), torch::tensor({2.0f, 3.0f})));

  // A BUILD state nested a million deep is dropped, not recursed into.
  std::string deep = b({0x80, 2}) + "}" + "N" + std::string(1000000, '\x85') + "b.";
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir + "/deep.pt");
    writer.writeRecord("data.pkl", deep.data(), deep.size());
    writer.writeEndOfFile();
  }
  EXPECT_TRUE(read_state_dict(dir + "/deep.pt").empty());

  // A view past its storage is refused.
  std::string past = pickle;
  past.replace(past.find(view), view.size(), tensor(5, k(2) + tuple1, k(1) + tuple1));
  {
    caffe2::serialize::PyTorchStreamWriter writer(dir + "/past.pt");
    writer.writeRecord("data.pkl", past.data(), past.size());
    writer.writeRecord("data/0", values.data(), values.size() * sizeof(float));
    writer.writeEndOfFile();
  }
  const std::string e = error_of([&] { read_state_dict(dir + "/past.pt"); });
  EXPECT_NE(e.find("reads past its storage (6 elements)"), std::string::npos) << e;
}

// Sources that do not fit are refused, naming what and where, before anything is written.
TEST(Finetune, RefusesSourcesThatDoNotFit) {
  const TempDir scratch;
  const std::string dir = scratch.path().string();
  torch::manual_seed(1);
  SASRec model(options(5));
  const std::string ids = dir + "/ids.txt";
  write_ids(ids, numbered("i", 5));

  // DataParallel's and torch.compile's prefixes are removed.
  save_state_dict(model, dir + "/prefixed.pt", [](const std::string& n) { return "module._orig_mod." + n; });
  EXPECT_EQ(load_pretrained(dir + "/prefixed.pt", ids).item_ids.size(), 5u);

  // An unknown name and a missing one, each with its shape.
  save_state_dict(model, dir + "/renamed.pt", [](const std::string& n) { return n == "final_norm.bias" ? "head.bias" : n; });
  std::string e = error_of([&] { load_pretrained(dir + "/renamed.pt", ids); });
  EXPECT_NE(e.find("missing 'final_norm.bias' [16]"), std::string::npos) << e;
  EXPECT_NE(e.find("cannot place 'head.bias' [16]"), std::string::npos) << e;

  // A weight that is not finite.
  {
    torch::NoGradGuard no_grad;
    model->named_parameters()["blocks.1.ffn_in.weight"][2][3] = std::nan("");
  }
  save_state_dict(model, dir + "/nan.pt");
  e = error_of([&] { load_pretrained(dir + "/nan.pt", ids); });
  EXPECT_NE(e.find("'blocks.1.ffn_in.weight' holds non-finite values"), std::string::npos) << e;
  torch::manual_seed(1);
  model = SASRec(options(5));
  save_state_dict(model, dir + "/good.pt");

  // Ids: too few, duplicated, invalid, missing, or given for a source that holds its own.
  write_ids(dir + "/four.txt", numbered("i", 4));
  e = error_of([&] { load_pretrained(dir + "/good.pt", dir + "/four.txt"); });
  EXPECT_NE(e.find("5 item rows (row 0 is padding), the ids name 4"), std::string::npos) << e;
  write_text(dir + "/twice.txt", "a\nb\nc\nb\ne\n");
  e = error_of([&] { load_pretrained(dir + "/good.pt", dir + "/twice.txt"); });
  EXPECT_NE(e.find("line 4: item id 'b' is listed twice (first at line 2)"), std::string::npos) << e;
  write_text(dir + "/bad.json", R"(["a", "b", "c\nd", "e", "f"])");
  e = error_of([&] { load_pretrained(dir + "/good.pt", dir + "/bad.json"); });
  EXPECT_NE(e.find("element 2: invalid item id"), std::string::npos) << e;
  write_text(dir + "/list.json", R"([11, 12, "x", 14, 15])");
  EXPECT_EQ(load_pretrained(dir + "/good.pt", dir + "/list.json").item_ids[1], "12");
  e = error_of([&] { load_pretrained(dir + "/good.pt"); });
  EXPECT_NE(e.find("holds no item ids"), std::string::npos) << e;

  // Pickles no state_dict holds: a call of anything else (code), and containers nested a million
  // deep (refused as not a dict, and torn down without recursion).
  auto pickle_file = [&](const std::string& name, const std::string& pickle) {
    caffe2::serialize::PyTorchStreamWriter writer(dir + "/" + name);
    writer.writeRecord("data.pkl", pickle.data(), pickle.size());
    writer.writeEndOfFile();
    return dir + "/" + name;
  };
  e = error_of([&] { load_pretrained(pickle_file("code.pt", std::string("\x80\x02" "cposix\nsystem\nX\x02\0\0\0lsR.", 25)), ids); });
  EXPECT_NE(e.find("the file calls posix.system"), std::string::npos) << e;
  e = error_of([&] { load_pretrained(pickle_file("deep.pt", "\x80\x02N" + std::string(1000000, '\x85') + "."), ids); });
  EXPECT_NE(e.find("something other than a dict of tensors"), std::string::npos) << e;

  // Not a model at all, and a safetensors file whose ranges point outside it.
  write_text(dir + "/text.pt", "PK\x03\x04 not really a zip");
  EXPECT_NE(error_of([&] { load_pretrained(dir + "/text.pt", ids); }), "");
  std::string header = R"({"item_embedding": {"dtype": "F32", "shape": [6, 16], "data_offsets": [0, 999999]}})";
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((header.size() >> (8 * i)) & 0xff);
  write_text(dir + "/short.safetensors", bytes + header + std::string(64, '\0'));
  e = error_of([&] { load_pretrained(dir + "/short.safetensors", ids); });
  EXPECT_NE(e.find("tensor 'item_embedding': data_offsets [0, 999999] fall outside the 64 data bytes"), std::string::npos) << e;
  write_text(dir + "/huge.safetensors", std::string("\xff\xff\xff\xff\xff\xff\xff\x7f", 8) + "{}");
  e = error_of([&] { load_pretrained(dir + "/huge.safetensors", ids); });
  EXPECT_NE(e.find("exceeds the file"), std::string::npos) << e;

  // Another architecture: the field and both values.
  const PretrainedModel source = load_pretrained(dir + "/good.pt", ids);
  auto wider = options(5);
  wider.hidden = 32;
  e = error_of([&] { check_same_architecture(source, wider); });
  EXPECT_NE(e.find("model.hidden 16, the config asks for 32"), std::string::npos) << e;
  auto deeper = options(5);
  deeper.blocks = 3;
  e = error_of([&] { check_same_architecture(source, deeper); });
  EXPECT_NE(e.find("model.blocks 2, the config asks for 3"), std::string::npos) << e;

  // A freshrec checkpoint holds its own ids and heads: an ids file is refused, other heads too.
  CheckpointInfo info;
  Config config;
  config.apply_override("model.hidden=16");
  config.apply_override("model.heads=2");
  config.apply_override("model.maxlen=12");
  info.config_yaml = config.to_yaml();
  info.items = ids_of(numbered("i", 5));
  save_checkpoint(dir + "/model.pt", model, nullptr, info);
  e = error_of([&] { load_pretrained(dir + "/model.pt", ids); });
  EXPECT_NE(e.find("holds its own item ids"), std::string::npos) << e;
  const PretrainedModel checkpoint = load_pretrained(dir + "/model.pt");
  EXPECT_EQ(checkpoint.kind, "freshrec checkpoint");
  e = error_of([&] { check_same_architecture(checkpoint, options(5, /*heads=*/4)); });
  EXPECT_NE(e.find("model.heads 2, the config asks for 4"), std::string::npos) << e;
}

// Rows follow their external ids; new items get the mean of the known rows; each finetune.train mode
// trains what it says, and frozen known rows keep the source's values through optimizer steps.
TEST(Finetune, AlignsRowsByIdAndTrainsWhatItSays) {
  const TempDir scratch;
  const std::string dir = scratch.path().string();
  torch::manual_seed(2);
  SASRec source_model(options(5));
  save_state_dict(source_model, dir + "/source.pt");
  write_ids(dir + "/ids.txt", {"a", "b", "c", "d", "e"});
  const PretrainedModel source = load_pretrained(dir + "/source.pt", dir + "/ids.txt");
  const auto& table = source.weights.at("item_embedding");

  // The new data knows c and a (in that order) and brings x and y.
  const IdMap catalogue = ids_of({"c", "x", "a", "y"});
  SASRec model(options(4));
  const Alignment a = align_to_catalogue(model, source, catalogue, "mean");
  EXPECT_EQ(a.known, 2);
  EXPECT_EQ(a.fresh, 2);
  EXPECT_EQ(a.known_rows, (std::vector<int64_t>{1, 3}));
  const auto& rows = model->item_embedding();
  EXPECT_TRUE(torch::equal(rows[1], table[3]));  // c was source row 3
  EXPECT_TRUE(torch::equal(rows[3], table[1]));  // a was source row 1
  const auto mean = (table[1] + table[3]) / 2;
  EXPECT_TRUE(torch::allclose(rows[2], mean));
  EXPECT_TRUE(torch::allclose(rows[4], mean));
  EXPECT_TRUE(torch::equal(rows[0], torch::zeros({16})));
  EXPECT_TRUE(torch::equal(model->named_parameters()["blocks.1.qkv.weight"], source.weights.at("blocks.1.qkv.weight")));

  // content: a new item's row is the mean, over its features, of the mean row of the known items with
  // that feature; without a shared feature (or features), the mean of every known row.
  {
    const ItemFeatures features = {{"a", {"X"}}, {"b", {"X", "Y"}}, {"c", {"Y"}},
                                   {"x", {"X"}}, {"y", {"X", "Y", "Z"}}, {"z", {"Q"}}};
    const IdMap more = ids_of({"a", "b", "c", "x", "y", "z", "w"});
    SASRec with_features(options(7));
    const Alignment c = align_to_catalogue(with_features, source, more, "content", &features);
    EXPECT_EQ(c.known, 3);
    EXPECT_EQ(c.fresh, 4);
    EXPECT_EQ(c.from_features, 2);
    const auto& t = with_features->item_embedding();
    const auto x_mean = (table[1] + table[2]) / 2, y_mean = (table[2] + table[3]) / 2;
    EXPECT_TRUE(torch::allclose(t[4], x_mean));
    EXPECT_TRUE(torch::allclose(t[5], (x_mean + y_mean) / 2));  // Z: no known item has it
    const auto all_mean = (table[1] + table[2] + table[3]) / 3;
    EXPECT_TRUE(torch::allclose(t[6], all_mean));
    EXPECT_TRUE(torch::allclose(t[7], all_mean));
  }

  // finetune.unmentioned_items=keep: the source's items the data never mentions join the catalogue
  // after the data's own, whose ids keep their numbers.
  {
    EventLog log;
    log.items.intern("c"), log.items.intern("x");
    EXPECT_EQ(add_unmentioned_items(log, source), 4);
    ASSERT_EQ(log.items.size(), 6u);
    EXPECT_EQ(log.items.external(1), "c");
    EXPECT_EQ(log.items.external(2), "x");
    EXPECT_EQ(log.items.external(3), "a");
    EXPECT_EQ(log.items.external(6), "e");
  }

  // random keeps the model's own initialisation for new rows.
  torch::manual_seed(9);
  SASRec fresh(options(4));
  const auto initial = fresh->item_embedding().detach().clone();
  align_to_catalogue(fresh, source, catalogue, "random");
  EXPECT_TRUE(torch::equal(fresh->item_embedding()[2], initial[2]));

  // top_blocks=1 with known rows frozen: one optimizer step moves the last block and the new rows only.
  FinetuneOptions top;
  top.train = "top_blocks", top.top_blocks = 1, top.freeze_known_rows = true;
  FinetunePlan plan(model, top, a.known_rows);
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : model->named_parameters()) before[p.key()] = p.value().detach().clone();
  std::vector<torch::Tensor> trained = plan.dense_trainable();
  trained.push_back(model->item_embedding());
  torch::optim::Adam adam(trained, torch::optim::AdamOptions(0.1));
  model->train();
  const auto histories = torch::tensor({0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 3, 1}, torch::kLong).view({1, 12});
  model->score_all(model->last_hidden(histories)).sum().backward();
  adam.step();
  plan.restore();
  for (const auto& p : model->named_parameters()) {
    const bool moved = !torch::equal(p.value(), before[p.key()]);
    const bool should = p.key() == "item_embedding" || p.key().rfind("blocks.1.", 0) == 0 || p.key().rfind("final_norm.", 0) == 0;
    EXPECT_EQ(p.value().requires_grad(), should) << p.key();
    if (!should) EXPECT_FALSE(moved) << p.key();
  }
  EXPECT_TRUE(torch::equal(rows[1], before["item_embedding"][1]));  // known rows frozen
  EXPECT_TRUE(torch::equal(rows[3], before["item_embedding"][3]));
  EXPECT_FALSE(torch::equal(rows[2], before["item_embedding"][2]));  // a new item learned
  EXPECT_EQ(plan.trained_parameters(), 2 * 16 + [&] {
    int64_t n = 0;
    for (const auto& t : plan.dense_trainable()) n += t.numel();
    return n;
  }());

  FinetuneOptions embeddings;
  embeddings.train = "embeddings";
  FinetunePlan only_embeddings(model, embeddings, a.known_rows);
  ASSERT_EQ(only_embeddings.dense_trainable().size(), 1u);
  EXPECT_TRUE(only_embeddings.dense_trainable()[0].is_same(model->named_parameters()["position_embedding"]));
}

// From the command line: train on one generated log, fine-tune on another (other users, an
// overlapping item catalogue), export the result, and fine-tune again from the export.
TEST(Finetune, CommandLineTrainsFineTunesAndExports) {
  const TempDir scratch;
  const std::string dir = scratch.path().string();
  auto run = [&](const std::string& args) { return run_command(std::string(FRESHREC_BINARY) + " --log-level warn " + args); };
  const std::string common =
      " model.hidden=16 model.maxlen=12 train.batch_size=64 train.threads=2 train.device=cpu train.log_every_seconds=1000"
      " generator.users=300 generator.items=80 generator.events_per_user=15 generator.new_item_fraction=0";
  auto [rc, out] = run("train" + common + " train.epochs=2 train.output_dir=" + dir + "/source");
  ASSERT_EQ(rc, 0) << out;
  // Another log: other users, 120 items of which the first 80 carry the source's ids.
  const std::string other = common + " generator.items=120 generator.seed=11 train.epochs=2";
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other + " finetune.train=top_blocks train.output_dir=" + dir + "/tuned");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_NE(out.find("fine-tuned"), std::string::npos) << out;
  EXPECT_NE(out.find("test of the source as it is"), std::string::npos) << out;
  const CheckpointInfo tuned = read_checkpoint_info(dir + "/tuned/best.pt");
  EXPECT_EQ(tuned.meta.at("kind"), "finetune");
  EXPECT_EQ(tuned.items.size(), 120u);  // the new data's catalogue
  // The frozen first block is the source's, bit for bit.
  SASRec before = load_checkpoint_model(dir + "/source/best.pt", torch::kCPU);
  SASRec after = load_checkpoint_model(dir + "/tuned/best.pt", torch::kCPU);
  EXPECT_TRUE(torch::equal(before->named_parameters()["blocks.0.qkv.weight"], after->named_parameters()["blocks.0.qkv.weight"]));
  EXPECT_FALSE(torch::equal(before->named_parameters()["blocks.1.qkv.weight"], after->named_parameters()["blocks.1.qkv.weight"]));
  // Its checkpoints hold the trained weights alone, over the frozen ones written once as base.pt.
  {
    torch::serialize::InputArchive archive;
    archive.load_from(dir + "/tuned/best.pt");
    c10::IValue names;
    torch::serialize::InputArchive model_archive;
    EXPECT_FALSE(archive.try_read("model", model_archive));
    ASSERT_TRUE(archive.try_read("trained_names", names));
    const std::string listed = names.toStringRef();
    EXPECT_EQ(listed.find("blocks.0."), std::string::npos) << listed;
    EXPECT_NE(listed.find("blocks.1.qkv.weight\n"), std::string::npos) << listed;
    EXPECT_NE(listed.find("item_embedding\n"), std::string::npos) << listed;
  }
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other + " finetune.train=top_blocks train.epochs=3 train.output_dir=" +
                          dir + "/tuned --resume " + dir + "/tuned/last.pt");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(read_checkpoint_info(dir + "/tuned/last.pt").meta.at("epoch"), 3);
  EXPECT_TRUE(torch::equal(before->named_parameters()["blocks.0.qkv.weight"],
                           load_checkpoint_model(dir + "/tuned/last.pt", torch::kCPU)->named_parameters()["blocks.0.qkv.weight"]));
  // A resume into another folder writes a base of its own there, so its checkpoints load.
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other + " finetune.train=top_blocks train.epochs=4 train.output_dir=" +
                          dir + "/elsewhere --resume " + dir + "/tuned/last.pt");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(fs::exists(dir + "/elsewhere/base.pt"));
  EXPECT_TRUE(torch::equal(before->named_parameters()["blocks.0.qkv.weight"],
                           load_checkpoint_model(dir + "/elsewhere/last.pt", torch::kCPU)->named_parameters()["blocks.0.qkv.weight"]));
  // Apart from its base, or beside another file of that name, it is refused by name.
  fs::create_directories(dir + "/moved");
  fs::copy_file(dir + "/tuned/best.pt", dir + "/moved/best.pt");
  EXPECT_NE(error_of([&] { load_checkpoint_model(dir + "/moved/best.pt", torch::kCPU); }).find("moved/base.pt is missing"), std::string::npos);
  fs::copy_file(dir + "/source/best.pt", dir + "/moved/base.pt");
  EXPECT_NE(error_of([&] { load_checkpoint_model(dir + "/moved/best.pt", torch::kCPU); }).find("is not its base"), std::string::npos);

  std::tie(rc, out) = run("export --checkpoint " + dir + "/tuned/best.pt --out " + dir + "/tuned.pt");
  ASSERT_EQ(rc, 0) << out;
  const ExportedModel exported(dir + "/tuned.pt");  // integer ids: the vocabulary is rows 1..N
  ASSERT_EQ(exported.vocabulary().size(), 120u);
  EXPECT_EQ(exported.vocabulary().front(), tuned.items.external(1));
  std::tie(rc, out) = run("finetune --from " + dir + "/tuned.pt" + other + " train.epochs=1 train.output_dir=" + dir + "/again");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_TRUE(fs::exists(dir + "/again/best.pt"));

  // Known rows frozen through the trainer, with the row-wise optimizer of sampled-softmax training,
  // the item table's own rate and an item adapter: every row of an item the source knows is the
  // source's, bit for bit, while what the model reads of them moves with the adapter.
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other +
                          " finetune.known_rows=freeze finetune.item_lr=0.01 finetune.item_lora_rank=2 train.loss=sampled"
                          " train.negatives=32 train.sparse_embeddings=true train.output_dir=" + dir + "/frozen");
  ASSERT_EQ(rc, 0) << out;
  const CheckpointInfo source_info = read_checkpoint_info(dir + "/source/best.pt");
  const CheckpointInfo frozen_info = read_checkpoint_info(dir + "/frozen/best.pt");
  SASRec frozen = load_checkpoint_model(dir + "/frozen/best.pt", torch::kCPU);
  ASSERT_EQ(frozen->options().item_lora_rank, 2);
  const auto read = frozen->item_table().detach();
  int known = 0, moved_new = 0, adapted = 0;
  for (int32_t id = 1; id <= static_cast<int32_t>(frozen_info.items.size()); ++id) {
    const int32_t in_source = source_info.items.find(frozen_info.items.external(id));
    if (in_source < 0) {
      moved_new += !torch::equal(frozen->item_embedding()[id], frozen->item_embedding()[frozen_info.items.size()]);
      continue;
    }
    ++known;
    EXPECT_TRUE(torch::equal(frozen->item_embedding()[id], before->item_embedding()[in_source])) << "item " << id;
    adapted += !torch::equal(read[id], before->item_embedding()[in_source]);
  }
  EXPECT_EQ(known, 80);
  EXPECT_GT(moved_new, 0);  // new items learned rows of their own
  EXPECT_EQ(adapted, 80);   // and the adapter moved every known one
  std::tie(rc, out) = run("export --checkpoint " + dir + "/frozen/best.pt --out " + dir + "/frozen.pt");
  ASSERT_EQ(rc, 0) << out;
  EXPECT_EQ(ExportedModel(dir + "/frozen.pt").meta().at("parameters").get<int64_t>(), before->parameter_count() + 40 * 16);
  // A fine-tune resumes only as a fine-tune.
  std::tie(rc, out) = run("train" + other + " train.output_dir=" + dir + "/frozen --resume " + dir + "/frozen/last.pt");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("resume it with freshrec finetune --from SOURCE --resume"), std::string::npos) << out;

  // Refusals leave nothing behind: another width, and an ids file for a checkpoint.
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other + " model.hidden=32 train.output_dir=" + dir + "/wide");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("model.hidden 16, the config asks for 32"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir + "/wide"));
  std::tie(rc, out) = run("finetune --from " + dir + "/source/best.pt" + other + " finetune.new_items=content finetune.item_features=" +
                          dir + "/none.csv train.output_dir=" + dir + "/featureless");
  EXPECT_NE(rc, 0);
  EXPECT_NE(out.find("none.csv"), std::string::npos) << out;
  EXPECT_FALSE(fs::exists(dir + "/featureless"));
}

// LoRA: a new adapter changes nothing; finetune.train=adapters moves the adapters and the item table
// alone; the export folds the adapters into the weights (plain aten ops) and scores as the engine does.
TEST(Finetune, LoraAdaptersTrainAloneAndFoldIntoTheExport) {
  torch::manual_seed(4);
  SASRec plain(options(30));
  auto lora_options = options(30);
  lora_options.lora_rank = 2, lora_options.lora_alpha = 4;
  SASRec model(lora_options);
  copy_plain_parameters(plain, model);
  const auto histories = torch::tensor({0, 0, 0, 0, 3, 7, 7, 1, 9, 12, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 5}, torch::kLong).view({2, 12});
  EXPECT_TRUE(torch::equal(scores_of(model, histories), scores_of(plain, histories)));  // B = 0

  // adapters: one step moves the adapters (B first: A's gradient is B's transpose times the rest)
  // and the item table, nothing else.
  FinetuneOptions adapters;
  adapters.train = "adapters";
  FinetunePlan plan(model, adapters, {});
  std::map<std::string, torch::Tensor> before;
  for (const auto& p : model->named_parameters()) before[p.key()] = p.value().detach().clone();
  std::vector<torch::Tensor> trained = plan.dense_trainable();
  EXPECT_EQ(trained.size(), 2u * 4 * 2);  // a and b of 4 layers in 2 blocks
  trained.push_back(model->item_embedding());
  torch::optim::Adam adam(trained, torch::optim::AdamOptions(0.05));
  model->train();
  for (int step = 0; step < 2; ++step) {
    adam.zero_grad();
    torch::nn::functional::cross_entropy(model->score_all(model->last_hidden(histories)), torch::tensor({4, 9}, torch::kLong)).backward();
    adam.step();
  }
  for (const auto& p : model->named_parameters()) {
    const bool adapter = p.key().find("_lora.") != std::string::npos;
    const bool moved = !torch::equal(p.value(), before[p.key()]);
    EXPECT_EQ(moved, adapter || p.key() == "item_embedding") << p.key();
  }
  EXPECT_FALSE(torch::equal(scores_of(model, histories), scores_of(plain, histories)));

  // Folded into the weights: a plain model of them scores as the adapted one, and so does the export.
  SASRec folded(options(30));
  {
    torch::NoGradGuard no_grad;
    auto params = folded->named_parameters();
    const auto merged = model->plain_parameters();
    ASSERT_EQ(merged.size(), params.size());
    for (const auto& [name, weight] : merged) params[name].copy_(weight);
  }
  const auto engine = scores_of(model, histories);
  EXPECT_LT((scores_of(folded, histories) - engine).abs().max().item<double>(), 1e-5);
  auto exported = export_torchscript(model, ids_of(numbered("", 30)), "model:\n  hidden: 16\n", {});
  const auto scored = exported_scores(exported, histories, 30);
  EXPECT_LT((scored - engine.narrow(1, 1, 30)).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(torchscript_meta(exported).at("parameters").get<int64_t>(), plain->parameter_count());
}

// The item adapter: a new one changes nothing; with the known rows frozen, training moves the adapter,
// the new rows and, through the adapter, what the model reads of the known rows, while their own
// weights stay the source's bit for bit; the padding row stays zero; folding it into the table (the
// stream, the export) scores as the adapted model; a grown table's new rows start without an update.
TEST(Finetune, AnItemAdapterMovesFrozenRowsAndFoldsIntoTheTable) {
  torch::manual_seed(5);
  SASRec plain(options(30));
  auto adapted_options = options(30);
  adapted_options.lora_rank = 2, adapted_options.item_lora_rank = 3, adapted_options.lora_alpha = 4;
  SASRec model(adapted_options);
  copy_plain_parameters(plain, model);
  const auto histories = torch::tensor({0, 0, 0, 0, 3, 7, 7, 1, 9, 12, 4, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 25, 5}, torch::kLong).view({2, 12});
  EXPECT_TRUE(torch::equal(scores_of(model, histories), scores_of(plain, histories)));  // A = 0

  FinetuneOptions adapters;
  adapters.train = "adapters", adapters.freeze_known_rows = true;
  std::vector<int64_t> known;
  for (int64_t id = 1; id <= 20; ++id) known.push_back(id);
  FinetunePlan plan(model, adapters, known);
  ASSERT_EQ(plan.item_adapter().size(), 2u);
  EXPECT_EQ(plan.dense_trainable().size(), 2u * 4 * 2);  // the block adapters only
  EXPECT_EQ(plan.trained_parameters(), 2 * (2 * (8 * 16 + 2 * 16)) + 10 * 16 + 31 * 3 + 3 * 16);
  const auto table_before = model->item_embedding().detach().clone();
  const auto read_before = model->item_table().detach().clone();
  std::vector<torch::Tensor> trained = plan.dense_trainable();
  trained.push_back(model->item_embedding());
  for (const auto& p : plan.item_adapter()) trained.push_back(p);
  torch::optim::Adam adam(trained, torch::optim::AdamOptions(0.05));
  model->train();
  for (int step = 0; step < 3; ++step) {
    adam.zero_grad();
    torch::nn::functional::cross_entropy(model->score_all(model->last_hidden(histories)), torch::tensor({4, 22}, torch::kLong)).backward();
    adam.step();
    plan.restore();
  }
  const auto table = model->item_embedding().detach();
  const auto read = model->item_table().detach();
  for (int64_t id = 1; id <= 20; ++id) EXPECT_TRUE(torch::equal(table[id], table_before[id])) << "item " << id;
  EXPECT_FALSE(torch::equal(table.narrow(0, 21, 10), table_before.narrow(0, 21, 10)));  // new rows learn
  EXPECT_FALSE(torch::equal(read.narrow(0, 1, 20), read_before.narrow(0, 1, 20)));      // the known ones move
  EXPECT_TRUE(torch::equal(read[0], table[0]));  // the padding row takes no update
  EXPECT_TRUE(torch::equal(model->item_adapter()[0][0], torch::zeros({3})));
  // The input lookup reads the adapted rows too.
  EXPECT_LT((model->lookup_items(torch::tensor({4, 22}, torch::kLong)) - read.index_select(0, torch::tensor({4, 22}, torch::kLong)))
                .abs().max().item<double>(), 1e-6);

  const auto engine = scores_of(model, histories);
  SASRec folded = fold_item_adapter(model);
  EXPECT_EQ(folded->options().item_lora_rank, 0);
  EXPECT_EQ(folded->options().lora_rank, 2);  // the block adapters stay adapters
  EXPECT_TRUE(folded->item_adapter().empty());
  EXPECT_LT((scores_of(folded, histories) - engine).abs().max().item<double>(), 1e-5);
  auto exported = export_torchscript(model, ids_of(numbered("", 30)), "model:\n  hidden: 16\n", {});
  const auto scored = exported_scores(exported, histories, 30);
  EXPECT_LT((scored - engine.narrow(1, 1, 30)).abs().max().item<double>(), 1e-5);
  EXPECT_EQ(torchscript_meta(exported).at("parameters").get<int64_t>(), plain->parameter_count());

  model->grow_items(34);
  EXPECT_EQ(model->item_adapter()[0].size(0), 35);
  EXPECT_TRUE(torch::equal(model->item_adapter()[0].narrow(0, 31, 4), torch::zeros({4, 3})));
  EXPECT_TRUE(torch::allclose(scores_of(model, histories).narrow(1, 0, 31), engine, 0, 1e-6));
}
