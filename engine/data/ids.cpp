// External ids and untrusted text; see ids.h.
#include "engine/data/ids.h"

#include <cstdint>
#include <cstdio>
#include <stdexcept>

namespace freshrec {
namespace {

// Length of the valid UTF-8 sequence at text[i] (1..4) and its code point, or 0 when invalid
// (overlong forms, surrogates and code points past U+10FFFF are invalid).
size_t utf8_sequence(std::string_view text, size_t i, uint32_t& code) {
  const auto byte = [&](size_t k) { return static_cast<uint8_t>(text[k]); };
  const uint8_t b0 = byte(i);
  size_t length;
  uint32_t minimum;
  if (b0 < 0x80) return code = b0, 1;
  if ((b0 & 0xE0) == 0xC0) length = 2, code = b0 & 0x1F, minimum = 0x80;
  else if ((b0 & 0xF0) == 0xE0) length = 3, code = b0 & 0x0F, minimum = 0x800;
  else if ((b0 & 0xF8) == 0xF0) length = 4, code = b0 & 0x07, minimum = 0x10000;
  else return 0;
  if (i + length > text.size()) return 0;
  for (size_t k = 1; k < length; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
    code = (code << 6) | (byte(i + k) & 0x3F);
  }
  if (code < minimum || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) return 0;
  return length;
}

bool is_control(uint32_t code) { return code < 0x20 || (code >= 0x7F && code <= 0x9F); }

const char kBase64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

}  // namespace

bool is_valid_utf8(std::string_view text) {
  uint32_t code;
  for (size_t i = 0; i < text.size();) {
    const size_t n = utf8_sequence(text, i, code);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string id_problem(std::string_view id) {
  if (id.empty()) return "empty";
  if (id.size() > kMaxIdBytes) return "longer than " + std::to_string(kMaxIdBytes) + " bytes";
  if (id.front() == '-') return "starts with '-'";
  if (id.front() == ' ' || id.back() == ' ') return "has a leading or trailing space";
  uint32_t code;
  for (size_t i = 0; i < id.size();) {
    const size_t n = utf8_sequence(id, i, code);
    if (n == 0) return "not valid UTF-8 (byte " + std::to_string(i) + ")";
    if (is_control(code)) return "has a control character (byte " + std::to_string(i) + ")";
    i += n;
  }
  return "";
}

std::string printable(std::string_view text, size_t max_bytes) {
  std::string out;
  uint32_t code;
  for (size_t i = 0; i < text.size();) {
    if (out.size() >= max_bytes) return out + "...";
    const size_t n = utf8_sequence(text, i, code);
    if (n == 0 || is_control(code)) {
      for (size_t k = 0; k < (n == 0 ? 1 : n); ++k) {
        char escape[8];
        std::snprintf(escape, sizeof escape, "\\x%02X", static_cast<unsigned>(static_cast<uint8_t>(text[i + k])));
        out += escape;
      }
      i += n == 0 ? 1 : n;
    } else {
      out.append(text.substr(i, n));
      i += n;
    }
  }
  return out;
}

std::string base64_encode(std::string_view bytes) {
  std::string out;
  out.reserve((bytes.size() + 2) / 3 * 4);
  for (size_t i = 0; i < bytes.size(); i += 3) {
    uint32_t chunk = static_cast<uint8_t>(bytes[i]) << 16;
    if (i + 1 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 1]) << 8;
    if (i + 2 < bytes.size()) chunk |= static_cast<uint8_t>(bytes[i + 2]);
    out += kBase64[(chunk >> 18) & 63];
    out += kBase64[(chunk >> 12) & 63];
    out += i + 1 < bytes.size() ? kBase64[(chunk >> 6) & 63] : '=';
    out += i + 2 < bytes.size() ? kBase64[chunk & 63] : '=';
  }
  return out;
}

std::string base64_decode(std::string_view text) {
  if (text.size() % 4 != 0) throw std::invalid_argument("base64: length is not a multiple of 4");
  auto value = [](char c) -> int {
    if (c >= 'A' && c <= 'Z') return c - 'A';
    if (c >= 'a' && c <= 'z') return c - 'a' + 26;
    if (c >= '0' && c <= '9') return c - '0' + 52;
    if (c == '+') return 62;
    if (c == '/') return 63;
    return -1;
  };
  std::string out;
  for (size_t i = 0; i < text.size(); i += 4) {
    const bool last = i + 4 == text.size();
    const int pad = last ? (text[i + 3] == '=') + (text[i + 2] == '=') : 0;
    uint32_t chunk = 0;
    for (size_t k = 0; k < 4; ++k) {
      const int v = k >= 4 - static_cast<size_t>(pad) ? 0 : value(text[i + k]);
      if (v < 0) throw std::invalid_argument("base64: bad character");
      chunk = (chunk << 6) | static_cast<uint32_t>(v);
    }
    out += static_cast<char>((chunk >> 16) & 0xFF);
    if (pad < 2) out += static_cast<char>((chunk >> 8) & 0xFF);
    if (pad < 1) out += static_cast<char>(chunk & 0xFF);
  }
  return out;
}

}  // namespace freshrec
