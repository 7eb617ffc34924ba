// state_dict reader; see state_dict.h. The pickle opcodes are those of protocol 2 that torch.save
// emits (and a few of later protocols), interpreted on a stack of small values; the tensors' bytes
// come from the zip's data/ records through LibTorch's own archive reader.
#include "engine/finetune/state_dict.h"

#include <torch/torch.h>
#include <caffe2/serialize/inline_container.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <stdexcept>
#include <unordered_map>
#include <vector>

namespace freshrec {
namespace {

struct Value;
using ValuePtr = std::shared_ptr<Value>;

void dismantle(std::vector<ValuePtr> work, bool all = false);

struct Value {
  Value() = default;
  Value(const Value&) = delete;
  Value& operator=(const Value&) = delete;
  // Children are torn down with a work list, never by recursion: a file can nest containers a
  // million deep, and any value (a BUILD's state, a REDUCE's arguments) may be dropped.
  ~Value() {
    if (!items.empty()) dismantle(std::move(items));
  }
  enum class Kind { None, Bool, Int, Float, String, Tuple, List, Dict, Tensor, Global, Mark } kind = Kind::None;
  int64_t integer = 0;
  double number = 0;
  std::string text;                                  // String; Global: "module.name"
  std::vector<ValuePtr> items;                       // Tuple, List; Dict: key, value, key, value, ...
  torch::Tensor tensor;                              // Tensor (a storage, or a tensor over one)
  torch::ScalarType dtype = torch::kFloat;           // Global naming a typed storage
};


const std::unordered_map<std::string, torch::ScalarType>& storage_types() {
  static const std::unordered_map<std::string, torch::ScalarType> types = {
      {"torch.FloatStorage", torch::kFloat},   {"torch.DoubleStorage", torch::kDouble}, {"torch.HalfStorage", torch::kHalf},
      {"torch.BFloat16Storage", torch::kBFloat16}, {"torch.LongStorage", torch::kLong}, {"torch.IntStorage", torch::kInt},
      {"torch.ShortStorage", torch::kShort},   {"torch.CharStorage", torch::kChar},     {"torch.ByteStorage", torch::kByte},
      {"torch.BoolStorage", torch::kBool}};
  return types;
}

// Tears down the containers reachable from `work` with a work list, so that no destructor recurses:
// those held nowhere else (a value still held elsewhere loses one reference and lives on), or with
// `all`, every one (the reader's end: no cycle, a dict holding itself through the memo, outlives it).
void dismantle(std::vector<ValuePtr> work, bool all) {
  while (!work.empty()) {
    ValuePtr v = std::move(work.back());
    work.pop_back();
    if (!v || (!all && v.use_count() > 1)) continue;
    for (auto& child : v->items) work.push_back(std::move(child));
    v->items.clear();
  }
}

class Unpickler {
 public:
  Unpickler(const std::string& path, const char* data, size_t size, caffe2::serialize::PyTorchStreamReader& archive,
            uint64_t file_bytes)
      : path_(path), data_(data), size_(size), archive_(archive), file_bytes_(file_bytes) {}
  ~Unpickler() {
    stack_.clear(), memo_.clear(), storages_.clear();
    dismantle(std::move(arena_), /*all=*/true);
  }

  ValuePtr run() {
    while (true) {
      const uint8_t op = byte();
      switch (op) {
        case 0x80: byte(); break;                    // PROTO
        case 0x95: bytes(8); break;                  // FRAME
        case 'c': {                                  // GLOBAL
          const std::string module = line(), name = line();
          push(global(module + "." + name));
          break;
        }
        case 0x93: {                                 // STACK_GLOBAL
          const auto name = pop(), module = pop();
          push(global(as_string(module) + "." + as_string(name)));
          break;
        }
        case 'q': memo_[byte()] = top(); break;      // BINPUT
        case 'r': memo_[uint(4)] = top(); break;     // LONG_BINPUT
        case 0x94: memo_[static_cast<uint32_t>(memo_.size())] = top(); break;  // MEMOIZE
        case 'h': push(memo(byte())); break;         // BINGET
        case 'j': push(memo(uint(4))); break;        // LONG_BINGET
        case '(': push(make(Value::Kind::Mark)); break;
        case ')': push(make(Value::Kind::Tuple)); break;
        case 't': push(collection(Value::Kind::Tuple, pop_to_mark())); break;
        case 0x85: case 0x86: case 0x87: {           // TUPLE1..3
          std::vector<ValuePtr> items(op - 0x84);
          for (size_t i = items.size(); i-- > 0;) items[i] = pop();
          push(collection(Value::Kind::Tuple, std::move(items)));
          break;
        }
        case '}': push(make(Value::Kind::Dict)); break;
        case ']': push(make(Value::Kind::List)); break;
        case 's': {                                  // SETITEM
          auto value = pop(), key = pop();
          add(top(), {key, value}, Value::Kind::Dict);
          break;
        }
        case 'u': case 'e': {                        // SETITEMS, APPENDS: the object under the MARK first
          const ValuePtr target = under_mark();
          add(target, pop_to_mark(), op == 'u' ? Value::Kind::Dict : Value::Kind::List);
          break;
        }
        case 'a': { auto value = pop(); add(top(), {value}, Value::Kind::List); break; }
        case 'X': push(string(uint(4))); break;      // BINUNICODE
        case 0x8c: push(string(byte())); break;      // SHORT_BINUNICODE
        case 0x8d: push(string(uint(8))); break;     // BINUNICODE8
        case 'J': push(integer(static_cast<int32_t>(uint(4)))); break;
        case 'K': push(integer(byte())); break;
        case 'M': push(integer(uint(2))); break;
        case 0x8a: {                                 // LONG1
          const size_t n = byte();
          if (n > 8) fail("an integer of " + std::to_string(n) + " bytes");
          uint64_t v = 0;
          const char* p = bytes(n);
          for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
          if (n > 0 && n < 8 && (static_cast<uint8_t>(p[n - 1]) & 0x80)) v |= ~uint64_t{0} << (8 * n);  // sign
          push(integer(static_cast<int64_t>(v)));
          break;
        }
        case 'N': push(make(Value::Kind::None)); break;
        case 0x88: case 0x89: { auto v = make(Value::Kind::Bool); v->integer = op == 0x88; push(v); break; }
        case 'G': {                                  // BINFLOAT, big-endian
          const char* p = bytes(8);
          uint64_t bits = 0;
          for (int i = 0; i < 8; ++i) bits = (bits << 8) | static_cast<uint8_t>(p[i]);
          auto v = make(Value::Kind::Float);
          std::memcpy(&v->number, &bits, 8);
          push(v);
          break;
        }
        case 'R': { auto args = pop(), callable = pop(); push(call(callable, args)); break; }  // REDUCE
        case 'b': {                                  // BUILD: an OrderedDict's _metadata, ignored
          pop();
          if (top()->kind != Value::Kind::Dict && top()->kind != Value::Kind::Tensor) fail("BUILD on something that is not a dict");
          break;
        }
        case 'Q': push(storage(pop())); break;       // BINPERSID
        case '.': return pop();                      // STOP
        default: fail("pickle opcode 0x" + hex(op) + ", which a state_dict does not use");
      }
    }
  }

 private:
  // Every value is made here and kept in the arena until the reader ends, which then empties them
  // all with a work list: nothing is destroyed recursively, no cycle outlives the reader, and the
  // number of values is bounded.
  ValuePtr make(Value::Kind kind) {
    if (arena_.size() >= kMaxValues) fail("over " + std::to_string(kMaxValues) + " values: not a state_dict");
    auto v = std::make_shared<Value>();
    v->kind = kind;
    arena_.push_back(v);
    return v;
  }
  // Storages and tensors together may hold at most a few times the file's size.
  void spend(uint64_t bytes) {
    spent_ += bytes;
    if (spent_ > 4 * file_bytes_ + (uint64_t{64} << 20))
      fail("its tensors would take " + std::to_string(spent_) + " bytes, far more than the file's " + std::to_string(file_bytes_));
  }
  static constexpr size_t kMaxValues = 20'000'000;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": cannot read the state_dict: " + what + " (at byte " + std::to_string(at_) + " of data.pkl)");
  }
  static std::string hex(uint8_t b) {
    const char* digits = "0123456789abcdef";
    return {digits[b >> 4], digits[b & 15]};
  }
  const char* bytes(size_t n) {
    if (n > size_ - at_) fail("the pickle ends early");
    const char* p = data_ + at_;
    at_ += n;
    return p;
  }
  uint8_t byte() { return static_cast<uint8_t>(*bytes(1)); }
  uint64_t uint(size_t n) {
    const char* p = bytes(n);
    uint64_t v = 0;
    for (size_t i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
    return v;
  }
  std::string line() {
    const void* end = std::memchr(data_ + at_, '\n', size_ - at_);
    if (!end) fail("a GLOBAL without its end of line");
    const size_t n = static_cast<const char*>(end) - (data_ + at_);
    std::string s(bytes(n), n);
    bytes(1);
    return s;
  }
  ValuePtr string(uint64_t n) {
    auto v = make(Value::Kind::String);
    v->text.assign(bytes(n), n);
    return v;
  }
  ValuePtr integer(int64_t i) {
    auto v = make(Value::Kind::Int);
    v->integer = i;
    return v;
  }
  ValuePtr collection(Value::Kind kind, std::vector<ValuePtr> items) {
    auto v = make(kind);
    v->items = std::move(items);
    return v;
  }
  void push(ValuePtr v) {
    if (stack_.size() > (1u << 20)) fail("a stack of over a million values");
    stack_.push_back(std::move(v));
  }
  ValuePtr pop() {
    if (stack_.empty()) fail("an empty stack");
    auto v = std::move(stack_.back());
    stack_.pop_back();
    return v;
  }
  const ValuePtr& top() {
    if (stack_.empty()) fail("an empty stack");
    return stack_.back();
  }
  ValuePtr memo(uint64_t key) {
    const auto it = memo_.find(static_cast<uint32_t>(key));
    if (it == memo_.end()) fail("a memo entry (" + std::to_string(key) + ") that was never stored");
    return it->second;
  }
  size_t mark_position() {
    for (size_t i = stack_.size(); i-- > 0;)
      if (stack_[i]->kind == Value::Kind::Mark) return i;
    fail("no MARK on the stack");
  }
  std::vector<ValuePtr> pop_to_mark() {
    const size_t mark = mark_position();
    std::vector<ValuePtr> items(stack_.begin() + static_cast<std::ptrdiff_t>(mark) + 1, stack_.end());
    stack_.resize(mark);
    return items;
  }
  ValuePtr under_mark() {
    const size_t mark = mark_position();
    if (mark == 0) fail("no object under the MARK");
    return stack_[mark - 1];
  }
  void add(const ValuePtr& target, const std::vector<ValuePtr>& items, Value::Kind kind) {
    if (target->kind != kind) fail(kind == Value::Kind::Dict ? "SETITEM on something that is not a dict" : "APPEND on something that is not a list");
    if (kind == Value::Kind::Dict && items.size() % 2) fail("SETITEMS with an odd number of values");
    target->items.insert(target->items.end(), items.begin(), items.end());
  }
  const std::string& as_string(const ValuePtr& v) const {
    if (v->kind != Value::Kind::String) fail("STACK_GLOBAL with a module or name that is not a string");
    return v->text;
  }
  ValuePtr global(const std::string& name) {
    static const char* known[] = {"collections.OrderedDict", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_parameter",
                                  "torch.jit._pickle.restore_type_tag"};
    bool ok = storage_types().count(name) > 0;
    for (const char* k : known) ok = ok || name == k;
    if (!ok) fail("the file calls " + name + ", which a state_dict of tensors does not need (save model.state_dict())");
    auto v = make(Value::Kind::Global);
    v->text = name;
    if (storage_types().count(name)) v->dtype = storage_types().at(name);
    return v;
  }
  std::vector<int64_t> ints(const ValuePtr& tuple) {
    if (tuple->kind != Value::Kind::Tuple) fail("a tensor's size or stride is not a tuple");
    std::vector<int64_t> out;
    for (const auto& v : tuple->items) {
      if (v->kind != Value::Kind::Int || v->integer < 0 || v->integer > (int64_t{1} << 31))
        fail("a tensor's size or stride holds a non-integer, negative or over 2^31 value");
      if (out.size() >= 16) fail("a tensor of over 16 dimensions");
      out.push_back(v->integer);
    }
    return out;
  }
  ValuePtr call(const ValuePtr& callable, const ValuePtr& args) {
    if (callable->kind != Value::Kind::Global || args->kind != Value::Kind::Tuple) fail("REDUCE of something that is not a known call");
    const auto& a = args->items;
    if (callable->text == "collections.OrderedDict") return make(Value::Kind::Dict);
    if (callable->text == "torch.jit._pickle.restore_type_tag") {  // LibTorch's pickler tags a typed dict
      if (a.empty()) fail("restore_type_tag without a value");
      return a[0];
    }
    if (callable->text == "torch._utils._rebuild_parameter") {
      if (a.empty() || a[0]->kind != Value::Kind::Tensor) fail("_rebuild_parameter without a tensor");
      return a[0];
    }
    if (callable->text == "torch._utils._rebuild_tensor_v2") {
      if (a.size() < 4 || a[0]->kind != Value::Kind::Tensor || a[1]->kind != Value::Kind::Int) fail("_rebuild_tensor_v2 with other arguments");
      const auto& storage = a[0]->tensor;
      const int64_t offset = a[1]->integer;
      const auto sizes = ints(a[2]), strides = ints(a[3]);
      if (sizes.size() != strides.size()) fail("a tensor whose size and stride differ in length");
      // Sizes and strides are in [0, 2^31] (ints() checks): each product below fits, and the sums are
      // checked before they could overflow.
      if (offset < 0 || offset > storage.numel()) fail("a tensor whose offset lies outside its storage");
      int64_t last = offset, elements = 1;  // the furthest element the view reads; how many it holds
      bool empty = false;
      for (size_t d = 0; d < sizes.size(); ++d) {
        if (sizes[d] == 0) {
          empty = true;
          continue;
        }
        const int64_t reach = (sizes[d] - 1) * strides[d];
        if (reach > std::numeric_limits<int64_t>::max() / 2 - last) fail("a tensor whose strides reach past 2^62 elements");
        last += reach;
        elements = sizes[d] > (int64_t{1} << 40) / elements ? int64_t{1} << 40 : elements * sizes[d];
      }
      if (!empty && last >= storage.numel())
        fail("a tensor that reads past its storage (" + std::to_string(storage.numel()) + " elements)");
      if (!empty && elements > storage.numel())
        fail("a tensor of " + std::to_string(elements) + " elements over a storage of " + std::to_string(storage.numel()) +
             " (an expanded view, which a state_dict does not hold)");
      spend(static_cast<uint64_t>(empty ? 0 : elements) * storage.element_size());
      auto v = make(Value::Kind::Tensor);
      v->tensor = storage.as_strided(sizes, strides, offset).clone();
      return v;
    }
    fail("a call of " + callable->text);
  }
  ValuePtr storage(const ValuePtr& id) {
    const auto& a = id->items;
    if (id->kind != Value::Kind::Tuple || a.size() != 5 || a[0]->kind != Value::Kind::String || a[0]->text != "storage" ||
        a[1]->kind != Value::Kind::Global || !storage_types().count(a[1]->text) || a[2]->kind != Value::Kind::String ||
        a[4]->kind != Value::Kind::Int || a[4]->integer < 0)
      fail("a persistent id that is not ('storage', type, key, location, size)");
    const std::string record = "data/" + a[2]->text;
    const auto cached = storages_.find(record);  // tensors sharing a storage read it once, as torch.load does
    if (cached != storages_.end()) return cached->second;
    if (!archive_.hasRecord(record)) fail("no record " + record + " in the archive");
    const uint64_t size = archive_.getRecordSize(record);
    const auto dtype = a[1]->dtype;
    const uint64_t element = c10::elementSize(dtype);
    if (static_cast<uint64_t>(a[4]->integer) > size / element)
      fail("record " + record + " holds " + std::to_string(size) + " bytes, its storage claims " +
           std::to_string(a[4]->integer) + " elements of " + std::to_string(element));
    if (size > file_bytes_) fail("record " + record + " claims " + std::to_string(size) + " bytes, more than the file");
    spend(size);
    auto [bytes, read] = archive_.getRecord(record);
    const int64_t numel = a[4]->integer;
    auto v = make(Value::Kind::Tensor);
    v->tensor = torch::empty({numel}, torch::TensorOptions().dtype(dtype));
    if (numel) std::memcpy(v->tensor.data_ptr(), bytes.get(), static_cast<size_t>(numel) * element);
    storages_.emplace(record, v);
    return v;
  }

  std::string path_;
  const char* data_;
  size_t size_, at_ = 0;
  caffe2::serialize::PyTorchStreamReader& archive_;
  uint64_t file_bytes_;
  std::unordered_map<std::string, ValuePtr> storages_;
  std::vector<ValuePtr> arena_;
  uint64_t spent_ = 0;
  std::vector<ValuePtr> stack_;
  std::unordered_map<uint32_t, ValuePtr> memo_;
};

}  // namespace

std::map<std::string, torch::Tensor> read_state_dict(const std::string& path) {
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error(path + ": cannot read: " + ec.message());
  std::unique_ptr<caffe2::serialize::PyTorchStreamReader> archive;
  try {
    archive = std::make_unique<caffe2::serialize::PyTorchStreamReader>(path);
    if (!archive->hasRecord("data.pkl")) throw std::runtime_error(path + ": no data.pkl: not a file torch.save wrote");
    if (archive->getRecordSize("data.pkl") > file_bytes) throw std::runtime_error(path + ": data.pkl claims more bytes than the file");
  } catch (const c10::Error& e) {
    throw std::runtime_error(path + ": not a torch.save zip archive: " + e.what_without_backtrace());
  }
  auto [pickle, size] = archive->getRecord("data.pkl");
  Unpickler unpickler(path, static_cast<const char*>(pickle.get()), size, *archive, file_bytes);
  const ValuePtr root = unpickler.run();
  struct Dismantle {
    ValuePtr root;
    ~Dismantle() { dismantle({root}, /*all=*/true); }
  } dismantle_root{root};
  if (root->kind != Value::Kind::Dict)
    throw std::runtime_error(path + ": holds something other than a dict of tensors: save model.state_dict(), not the model");
  std::map<std::string, torch::Tensor> out;
  for (size_t i = 0; i + 1 < root->items.size(); i += 2) {
    const auto& key = root->items[i];
    const auto& value = root->items[i + 1];
    if (key->kind != Value::Kind::String) throw std::runtime_error(path + ": a state_dict key that is not a name");
    if (value->kind != Value::Kind::Tensor) throw std::runtime_error(path + ": '" + key->text + "' is not a tensor");
    out[key->text] = value->tensor;
  }
  return out;
}

}  // namespace freshrec
