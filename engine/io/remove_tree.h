// Removing a folder and everything in it. Torch-free.
//
// std::filesystem::remove_all is not used: the torch wheel's libtorch.so exports its own copy of
// std::filesystem, and a call that binds to it there can crash (executables name libstdc++ first among
// their libraries to avoid that, see CMakeLists.txt, but a binary built elsewhere may not).
#pragma once

#include <string>

namespace freshrec {

// Removes `path` and, when it is a folder, everything under it, without following symbolic links
// (a link is removed, not what it points to). A missing path is not an error; any other failure
// throws std::runtime_error naming the file and the cause.
void remove_tree(const std::string& path);

}  // namespace freshrec
