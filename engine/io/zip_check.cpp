// Zip archive integrity; see zip_check.h. The layout read here (APPNOTE 6.3): the end-of-central-
// directory record (zip64 when the archive is large), the central directory, and each record's local
// header followed by its bytes (stored, or deflated).
#include "engine/io/zip_check.h"

#include <zlib.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <set>
#include <stdexcept>
#include <tuple>
#include <vector>

namespace freshrec {
namespace {

uint64_t little_endian(const unsigned char* p, int bytes) {
  uint64_t v = 0;
  for (int i = bytes - 1; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

class ZipReader {
 public:
  explicit ZipReader(const std::string& path) : path_(path), in_(path, std::ios::binary) {
    if (!in_) fail("cannot open");
    in_.seekg(0, std::ios::end);
    size_ = static_cast<uint64_t>(in_.tellg());
  }

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ": corrupt or incomplete archive: " + what);
  }

  std::vector<unsigned char> read(uint64_t offset, uint64_t length) {
    if (offset > size_ || length > size_ - offset) fail("a record points past the end of the file");
    std::vector<unsigned char> bytes(length);
    in_.seekg(static_cast<std::streamoff>(offset));
    in_.read(reinterpret_cast<char*>(bytes.data()), static_cast<std::streamsize>(length));
    if (!in_) fail("read failed");
    return bytes;
  }

  // CRC-32 of `length` bytes at `offset`, read in chunks.
  uint32_t crc_of(uint64_t offset, uint64_t length) {
    if (offset > size_ || length > size_ - offset) fail("a record's data runs past the end of the file");
    in_.seekg(static_cast<std::streamoff>(offset));
    std::vector<char> chunk(1 << 20);
    uLong crc = crc32(0L, Z_NULL, 0);
    while (length > 0) {
      const auto n = static_cast<std::streamsize>(std::min<uint64_t>(length, chunk.size()));
      in_.read(chunk.data(), n);
      if (!in_) fail("read failed");
      crc = crc32(crc, reinterpret_cast<const Bytef*>(chunk.data()), static_cast<uInt>(n));
      length -= static_cast<uint64_t>(n);
    }
    return static_cast<uint32_t>(crc);
  }

  // CRC-32 of the data a raw deflate stream of `length` bytes at `offset` inflates to; `inflated` gets
  // its size.
  uint32_t crc_of_deflated(uint64_t offset, uint64_t length, uint64_t& inflated, const std::string& name) {
    if (offset > size_ || length > size_ - offset) fail("record '" + name + "' runs past the end of the file");
    in_.seekg(static_cast<std::streamoff>(offset));
    z_stream z{};
    if (inflateInit2(&z, -MAX_WBITS) != Z_OK) fail("cannot start the decompressor");
    std::vector<unsigned char> input(1 << 16), output(1 << 16);
    uLong crc = crc32(0L, Z_NULL, 0);
    inflated = 0;
    int status = Z_OK;
    while (status != Z_STREAM_END) {
      if (z.avail_in == 0) {
        const auto n = static_cast<std::streamsize>(std::min<uint64_t>(length, input.size()));
        if (n == 0) break;
        in_.read(reinterpret_cast<char*>(input.data()), n);
        if (!in_) break;
        length -= static_cast<uint64_t>(n);
        z.next_in = input.data(), z.avail_in = static_cast<uInt>(n);
      }
      z.next_out = output.data(), z.avail_out = static_cast<uInt>(output.size());
      status = inflate(&z, Z_NO_FLUSH);
      if (status != Z_OK && status != Z_STREAM_END) break;
      const auto produced = output.size() - z.avail_out;
      crc = crc32(crc, output.data(), static_cast<uInt>(produced));
      inflated += produced;
    }
    inflateEnd(&z);
    if (status != Z_STREAM_END) fail("record '" + name + "' does not decompress");
    return static_cast<uint32_t>(crc);
  }

  uint64_t size() const { return size_; }

 private:
  std::string path_;
  std::ifstream in_;
  uint64_t size_ = 0;
};

void check(const std::string& path) {
  ZipReader zip(path);
  // The end-of-central-directory record: 22 bytes plus a comment of up to 65,535.
  const uint64_t tail = std::min<uint64_t>(zip.size(), 22 + 65535);
  if (tail < 22) zip.fail("too short to be a zip archive");
  const auto end = zip.read(zip.size() - tail, tail);
  int64_t eocd = -1;
  for (int64_t i = static_cast<int64_t>(tail) - 22; i >= 0; --i)
    if (little_endian(&end[i], 4) == 0x06054b50) {
      eocd = i;
      break;
    }
  if (eocd < 0) zip.fail("no end-of-central-directory record (the file is truncated)");
  uint64_t entries = little_endian(&end[eocd + 10], 2);
  uint64_t directory_size = little_endian(&end[eocd + 12], 4);
  uint64_t directory_offset = little_endian(&end[eocd + 16], 4);
  if (entries == 0xFFFF || directory_size == 0xFFFFFFFF || directory_offset == 0xFFFFFFFF) {
    // Zip64: a locator just before the record points at the zip64 end-of-central-directory record.
    const uint64_t eocd_at = zip.size() - tail + static_cast<uint64_t>(eocd);
    if (eocd_at < 20) zip.fail("zip64 locator missing");
    const auto locator = zip.read(eocd_at - 20, 20);
    if (little_endian(&locator[0], 4) != 0x07064b50) zip.fail("zip64 locator missing");
    const auto record = zip.read(little_endian(&locator[8], 8), 56);
    if (little_endian(&record[0], 4) != 0x06064b50) zip.fail("zip64 end-of-central-directory record missing");
    entries = little_endian(&record[32], 8);
    directory_size = little_endian(&record[40], 8);
    directory_offset = little_endian(&record[48], 8);
  }
  const auto directory = zip.read(directory_offset, directory_size);
  size_t at = 0;
  for (uint64_t e = 0; e < entries; ++e) {
    if (at + 46 > directory.size() || little_endian(&directory[at], 4) != 0x02014b50)
      zip.fail("central directory entry " + std::to_string(e) + " is damaged");
    const unsigned char* entry = &directory[at];
    const uint64_t method = little_endian(entry + 10, 2);
    const auto crc = static_cast<uint32_t>(little_endian(entry + 16, 4));
    uint64_t compressed = little_endian(entry + 20, 4);
    uint64_t uncompressed = little_endian(entry + 24, 4);
    const uint64_t name_length = little_endian(entry + 28, 2), extra_length = little_endian(entry + 30, 2),
                   comment_length = little_endian(entry + 32, 2);
    uint64_t local_offset = little_endian(entry + 42, 4);
    if (at + 46 + name_length + extra_length + comment_length > directory.size())
      zip.fail("central directory entry " + std::to_string(e) + " is damaged");
    const std::string name(reinterpret_cast<const char*>(entry + 46), name_length);
    // Zip64 sizes and offset, in this order, for the fields that hold 0xFFFFFFFF.
    for (size_t x = 0; x + 4 <= extra_length;) {
      const unsigned char* field = entry + 46 + name_length + x;
      const uint64_t id = little_endian(field, 2), length = little_endian(field + 2, 2);
      if (id == 0x0001) {
        size_t v = 4;
        for (uint64_t* target : {&uncompressed, &compressed, &local_offset})
          if (*target == 0xFFFFFFFF && v + 8 <= 4 + length) *target = little_endian(field + v, 8), v += 8;
      }
      x += 4 + length;
    }
    if (method != 0 && method != 8) zip.fail("record '" + name + "' uses compression method " + std::to_string(method));
    if (method == 0 && compressed != uncompressed) zip.fail("record '" + name + "' has inconsistent sizes");
    const auto local = zip.read(local_offset, 30);
    if (little_endian(&local[0], 4) != 0x04034b50) zip.fail("record '" + name + "' has no local header");
    const uint64_t data = local_offset + 30 + little_endian(&local[26], 2) + little_endian(&local[28], 2);
    uint64_t inflated = uncompressed;
    const uint32_t actual = method == 0 ? zip.crc_of(data, uncompressed) : zip.crc_of_deflated(data, compressed, inflated, name);
    if (actual != crc || inflated != uncompressed) zip.fail("record '" + name + "' does not match its CRC-32");
    at += 46 + name_length + extra_length + comment_length;
  }
}

}  // namespace

void check_archive_integrity(const std::string& path) {
  namespace fs = std::filesystem;
  static std::mutex mutex;
  static std::set<std::tuple<std::string, uintmax_t, fs::file_time_type>> checked;
  std::error_code ec;
  const auto key = std::make_tuple(fs::absolute(path, ec).string(), fs::file_size(path, ec), fs::last_write_time(path, ec));
  if (ec) throw std::runtime_error(path + ": cannot read: " + ec.message());
  {
    std::lock_guard<std::mutex> lock(mutex);
    if (checked.count(key)) return;
  }
  check(path);
  std::lock_guard<std::mutex> lock(mutex);
  checked.insert(key);
}

}  // namespace freshrec
