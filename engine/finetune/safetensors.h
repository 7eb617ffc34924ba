// A reader for safetensors files (an 8-byte little-endian header length, a JSON header naming each
// tensor's dtype, shape and byte range, then the raw little-endian data), the format Hugging Face
// tools write. Every field is checked against the file before a byte is read: a header or range that
// points outside the file, overlaps, or does not match its shape is refused with the tensor's name.
#pragma once

#include <torch/types.h>

#include <map>
#include <string>

namespace freshrec {

// The file's tensors by name, on the CPU, in their stored dtype (F32, F16, BF16, F64, I64, I32, BOOL).
// Throws std::runtime_error naming the file and what is wrong.
std::map<std::string, torch::Tensor> read_safetensors(const std::string& path);

}  // namespace freshrec
