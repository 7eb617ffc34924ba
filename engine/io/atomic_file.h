// Durable file writes: a temporary file in the same folder, fsync, rename, fsync of the folder, so a
// crash leaves either the old file or the new one, never half of one. Torch-free.
#pragma once

#include <functional>
#include <string>

namespace freshrec {

// Writes `contents` to `path` atomically (creating its folder when missing).
void write_file_atomically(const std::string& path, const std::string& contents);
// The same for any writer: `write` fills the temporary file it is given, which then replaces `path`.
// When `write` throws, the temporary file is removed and `path` is left as it was.
void save_atomically(const std::string& path, const std::function<void(const std::string& temporary)>& write);

}  // namespace freshrec
