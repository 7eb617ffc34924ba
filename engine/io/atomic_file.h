// Durable file writes: a temporary file in the same folder, fsync, rename, fsync of the folder, so a
// crash leaves either the old file or the new one, never half of one. Every byte goes through
// write(2) with its errors kept, so a full disk or a file-size limit becomes one clear error naming
// the file and the cause: the temporary file is removed and the previous file stays as it was.
// Torch-free.
#pragma once

#include <functional>
#include <ostream>
#include <string>

namespace freshrec {

// Writes `contents` to `path` atomically (creating its folder when missing).
void write_file_atomically(const std::string& path, const std::string& contents);

// The same for any writer: `write` fills the stream it is given, which then replaces `path`. The
// stream never reports a failure to its writer (LibTorch's zip writer aborts the process when an
// error reaches its destructor); the first one is kept and thrown after `write` returns. When `write`
// throws or a write fails, the temporary file is removed and `path` is left as it was.
void save_atomically(const std::string& path, const std::function<void(std::ostream& out)>& write);

}  // namespace freshrec
