// External ids (users, items) and untrusted text: the one rule every reader, the stream and the server
// apply to an id, and safe renderings of arbitrary bytes for messages and dead letters. Torch-free.
#pragma once

#include <cstddef>
#include <string>
#include <string_view>

namespace freshrec {

// An id is 1 to kMaxIdBytes bytes of valid UTF-8 with no control characters (U+0000..U+001F,
// U+007F..U+009F), no leading or trailing space, and no leading '-'. Ids are compared as text.
constexpr size_t kMaxIdBytes = 256;

// "" when `id` is a valid id, else what is wrong with it ("empty", "longer than 256 bytes", ...).
std::string id_problem(std::string_view id);

bool is_valid_utf8(std::string_view text);

// `text` for a message: valid UTF-8 kept, control characters and invalid bytes as \xNN escapes, cut
// to about `max_bytes` with "...". The result is always valid, printable UTF-8.
std::string printable(std::string_view text, size_t max_bytes = 120);

// Standard base64 (RFC 4648, with padding) and back; decode throws std::invalid_argument on bad input.
std::string base64_encode(std::string_view bytes);
std::string base64_decode(std::string_view text);

}  // namespace freshrec
