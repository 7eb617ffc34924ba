// Per-user sequences and batch building; see sequences.h.
#include "engine/data/sequences.h"

#include <algorithm>
#include <stdexcept>

namespace freshrec {

UserSequences UserSequences::from_log(const EventLog& log) {
  UserSequences s;
  s.items.resize(log.num_users());
  s.num_items = log.num_items();
  // The log is sorted by time, so appending keeps each user's items in time order.
  for (const auto& e : log.events) s.items[e.user].push_back(e.item);
  return s;
}

size_t UserSequences::prefix_length(int32_t user, Split split) const {
  const size_t n = items.at(user).size();
  const bool evaluated = n >= 3;
  switch (split) {
    case Split::Train: return evaluated ? n - 2 : n;
    case Split::Validation: return evaluated ? n - 2 : 0;
    case Split::Test: return evaluated ? n - 1 : 0;
  }
  return 0;
}

std::vector<int32_t> UserSequences::evaluation_users() const {
  std::vector<int32_t> users;
  for (int32_t u = 0; u < num_users(); ++u)
    if (items[u].size() >= 3) users.push_back(u);
  return users;
}

std::vector<int32_t> UserSequences::training_users() const {
  std::vector<int32_t> users;
  for (int32_t u = 0; u < num_users(); ++u)
    if (prefix_length(u, Split::Train) >= 2) users.push_back(u);
  return users;
}

std::vector<int64_t> UserSequences::training_item_counts() const {
  std::vector<int64_t> counts(static_cast<size_t>(num_items) + 1, 0);
  for (int32_t u = 0; u < num_users(); ++u) {
    const size_t n = prefix_length(u, Split::Train);
    for (size_t i = 0; i < n; ++i) ++counts[items[u][i]];
  }
  return counts;
}

void fill_training_row(const int32_t* seq, size_t n, int64_t maxlen, int64_t* inputs, int64_t* targets) {
  const int64_t pairs = std::min<int64_t>(static_cast<int64_t>(n) - 1, maxlen);
  // Right-align: position maxlen-1 holds the newest input item.
  for (int64_t k = 0; k < pairs; ++k) {
    const int64_t pos = maxlen - pairs + k;
    inputs[pos] = seq[n - 1 - pairs + k];
    targets[pos] = seq[n - pairs + k];
  }
}

std::vector<int64_t> nonzero_positions(const std::vector<int64_t>& targets) {
  std::vector<int64_t> positions;
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i] != 0) positions.push_back(static_cast<int64_t>(i));
  return positions;
}

SequenceBatch make_train_batch(const UserSequences& sequences, const std::vector<int32_t>& users, int64_t maxlen) {
  SequenceBatch b;
  b.rows = static_cast<int64_t>(users.size());
  b.length = maxlen;
  b.inputs.assign(b.rows * maxlen, 0);
  b.targets.assign(b.rows * maxlen, 0);
  b.users = users;
  for (int64_t r = 0; r < b.rows; ++r) {
    const auto& seq = sequences.items.at(users[r]);
    const int64_t end = static_cast<int64_t>(sequences.prefix_length(users[r], Split::Train));
    if (end < 2) throw std::invalid_argument("make_train_batch: user " + std::to_string(users[r]) + " has no training pair");
    fill_training_row(seq.data(), static_cast<size_t>(end), maxlen, &b.inputs[r * maxlen], &b.targets[r * maxlen]);
  }
  return b;
}

SequenceBatch make_eval_batch(const UserSequences& sequences, const std::vector<int32_t>& users, Split split,
                              int64_t maxlen) {
  if (split == Split::Train) throw std::invalid_argument("make_eval_batch: split must be Validation or Test");
  SequenceBatch b;
  b.rows = static_cast<int64_t>(users.size());
  b.length = maxlen;
  b.inputs.assign(b.rows * maxlen, 0);
  b.targets.assign(b.rows, 0);
  b.users = users;
  for (int64_t r = 0; r < b.rows; ++r) {
    const auto& seq = sequences.items.at(users[r]);
    const int64_t end = static_cast<int64_t>(sequences.prefix_length(users[r], split));
    if (end < 1) throw std::invalid_argument("make_eval_batch: user " + std::to_string(users[r]) + " has no target");
    const int64_t n = std::min<int64_t>(end, maxlen);
    for (int64_t k = 0; k < n; ++k) b.inputs[r * maxlen + maxlen - n + k] = seq[end - n + k];
    b.targets[r] = seq[end];
  }
  return b;
}

}  // namespace freshrec
