// Removing a folder tree with nftw(3); see remove_tree.h.
#include "engine/io/remove_tree.h"

#include <ftw.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <stdexcept>

namespace freshrec {
namespace {

// nftw's callback has no user argument: the first failure is kept here (one walk per thread).
thread_local std::string failed_path;
thread_local int failed_errno = 0;

int remove_entry(const char* path, const struct stat*, int, struct FTW*) {
  if (::remove(path) == 0 || errno == ENOENT) return 0;
  failed_path = path;
  failed_errno = errno;
  return 1;  // stops the walk
}

}  // namespace

void remove_tree(const std::string& given) {
  // "link/" would name the folder a link points to: the link itself is what is removed.
  std::string path = given;
  while (path.size() > 1 && path.back() == '/') path.pop_back();
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return;
    throw std::runtime_error(path + ": cannot remove: " + std::strerror(errno));
  }
  failed_path.clear();
  failed_errno = 0;
  // Children before their folder (FTW_DEPTH), links as links (FTW_PHYS), within one file system.
  const int r = ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS | FTW_MOUNT);
  if (r == 0) return;
  if (failed_errno != 0)
    throw std::runtime_error(failed_path + ": cannot remove: " + std::strerror(failed_errno));
  throw std::runtime_error(path + ": cannot remove: " + std::strerror(errno));
}

}  // namespace freshrec
