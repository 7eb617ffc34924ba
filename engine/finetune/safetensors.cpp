// safetensors reader; see safetensors.h.
#include "engine/finetune/safetensors.h"

#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <stdexcept>

namespace freshrec {
namespace {

struct DType {
  const char* name;
  torch::ScalarType type;
  int64_t bytes;
};

constexpr DType kDTypes[] = {{"F32", torch::kFloat, 4}, {"F16", torch::kHalf, 2}, {"BF16", torch::kBFloat16, 2},
                             {"F64", torch::kDouble, 8}, {"I64", torch::kLong, 8},  {"I32", torch::kInt, 4},
                             {"BOOL", torch::kBool, 1}};

constexpr uint64_t kMaxHeaderBytes = 100u << 20;  // as the reference implementation

}  // namespace

std::map<std::string, torch::Tensor> read_safetensors(const std::string& path) {
  auto fail = [&](const std::string& what) { throw std::runtime_error(path + ": not a valid safetensors file: " + what); };
  std::error_code ec;
  const uint64_t file_bytes = std::filesystem::file_size(path, ec);
  if (ec) throw std::runtime_error(path + ": cannot read: " + ec.message());
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open");
  if (file_bytes < 8) fail("shorter than its 8-byte header length");
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_bytes = 0;
  for (int i = 7; i >= 0; --i) header_bytes = (header_bytes << 8) | length_bytes[i];  // little-endian
  if (header_bytes > kMaxHeaderBytes || header_bytes > file_bytes - 8)
    fail("its header length (" + std::to_string(header_bytes) + " bytes) exceeds the file");
  std::string header_text(header_bytes, '\0');
  in.read(header_text.data(), static_cast<std::streamsize>(header_bytes));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(header_text);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("its header is not JSON: ") + e.what());
  }
  if (!header.is_object()) fail("its header is not a JSON object");
  const uint64_t data_bytes = file_bytes - 8 - header_bytes;

  struct Entry {
    std::string name;
    const DType* dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;
  };
  std::vector<Entry> entries;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") continue;
    auto bad = [&](const std::string& what) { fail("tensor '" + name + "': " + what); };
    if (!entry.is_object() || !entry.contains("dtype") || !entry.contains("shape") || !entry.contains("data_offsets"))
      bad("needs dtype, shape and data_offsets");
    const auto& dtype_name = entry["dtype"];
    const DType* dtype = nullptr;
    for (const auto& d : kDTypes)
      if (dtype_name.is_string() && dtype_name.get<std::string>() == d.name) dtype = &d;
    if (!dtype) bad("dtype " + dtype_name.dump() + " is not one of F32, F16, BF16, F64, I64, I32, BOOL");
    std::vector<int64_t> shape;
    uint64_t numel = 1;
    if (!entry["shape"].is_array()) bad("shape is not a list");
    for (const auto& d : entry["shape"]) {
      if (!d.is_number_unsigned()) bad("shape " + entry["shape"].dump() + " holds a non-integer or negative size");
      const uint64_t size = d.get<uint64_t>();
      if (size > (uint64_t{1} << 40) || (size > 0 && numel > (uint64_t{1} << 40) / size)) bad("shape is too large");
      numel *= size;
      shape.push_back(static_cast<int64_t>(size));
    }
    const auto& offsets = entry["data_offsets"];
    if (!offsets.is_array() || offsets.size() != 2 || !offsets[0].is_number_unsigned() || !offsets[1].is_number_unsigned())
      bad("data_offsets is not [begin, end]");
    const uint64_t begin = offsets[0].get<uint64_t>(), end = offsets[1].get<uint64_t>();
    if (begin > end || end > data_bytes)
      bad("data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) + "] fall outside the " +
          std::to_string(data_bytes) + " data bytes");
    if (end - begin != numel * static_cast<uint64_t>(dtype->bytes))
      bad("holds " + std::to_string(end - begin) + " bytes, its shape and dtype need " +
          std::to_string(numel * static_cast<uint64_t>(dtype->bytes)));
    entries.push_back({name, dtype, std::move(shape), begin, end});
  }
  // Every range is checked before a tensor is allocated: overlapping ranges would let a small file
  // claim its bytes many times over.
  std::vector<const Entry*> by_offset;
  for (const auto& e : entries) by_offset.push_back(&e);
  std::sort(by_offset.begin(), by_offset.end(),
            [](const Entry* a, const Entry* b) { return a->begin != b->begin ? a->begin < b->begin : a->end < b->end; });
  for (size_t i = 1; i < by_offset.size(); ++i)
    if (by_offset[i]->begin < by_offset[i - 1]->end)
      fail("tensors '" + by_offset[i - 1]->name + "' and '" + by_offset[i]->name + "' share bytes");
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& e : entries) {
    auto tensor = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    in.seekg(static_cast<std::streamoff>(8 + header_bytes + e.begin));
    in.read(static_cast<char*>(tensor.data_ptr()), static_cast<std::streamsize>(e.end - e.begin));
    if (!in) fail("tensor '" + e.name + "': cannot read its bytes");
    tensors.emplace(e.name, std::move(tensor));
  }
  return tensors;
}

}  // namespace freshrec
