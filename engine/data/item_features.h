// Side features of items (MovieLens genres, or any tags): what finetune.new_items=content reads to
// give a new item the mean row of the known items that share its features. Torch-free.
//
// Formats, told apart by the first data line:
// - MovieLens movies.dat: `id::title::Feature|Feature` (ML-1M; the title is ignored);
// - MovieLens movies.csv: a header, then `id,title,Feature|Feature` (the title may be quoted and hold
//   commas: the id is the first field, the features the last);
// - a two-column CSV: `id,Feature|Feature` (with or without a header naming them).
// "(no genres listed)" and empty lists mean no features. Files may be gzipped.
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

namespace freshrec {

// External item id -> its features. Throws DataError naming the file and line of a line it cannot
// read (no separator, an invalid id, an id listed twice).
std::unordered_map<std::string, std::vector<std::string>> read_item_features(const std::string& path);

}  // namespace freshrec
