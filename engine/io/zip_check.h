// Integrity of the zip archives LibTorch writes (checkpoints, TorchScript exports). Their writer stores
// a CRC-32 of every record but their reader does not check it, so a corrupt tensor would load; this
// check reads every record (stored, or deflated as code records are) and compares. Torch-free.
#pragma once

#include <string>

namespace freshrec {

// Throws std::runtime_error naming `path` and the record when the file is not a complete zip archive
// whose records' CRC-32s match their contents. A file already checked with the
// same size and modification time is not read again.
void check_archive_integrity(const std::string& path);

}  // namespace freshrec
