// Per-user history store; see history_store.h.
#include "engine/stream/history_store.h"

#include <algorithm>
#include <stdexcept>

namespace freshrec {

int32_t HistoryStore::user_slot(const std::string& external_user, bool* created) {
  const int32_t before = static_cast<int32_t>(users_.size());
  const int32_t slot = users_.intern(external_user);
  if (created) *created = slot >= before;
  if (slot >= static_cast<int32_t>(histories_.size())) histories_.resize(slot + 1), is_unsettled_.resize(slot + 1);
  return slot;
}

void HistoryStore::push(int32_t slot, int32_t item) {
  histories_.at(slot).push_back(item);
  if (keep_ > 0 && !is_unsettled_[slot]) is_unsettled_[slot] = true, unsettled_.push_back(slot);
}

void HistoryStore::settle() {
  for (int32_t slot : unsettled_) {
    auto& h = histories_[slot];
    if (static_cast<int64_t>(h.size()) > keep_) h.erase(h.begin(), h.end() - keep_);
    is_unsettled_[slot] = false;
  }
  unsettled_.clear();
}

std::vector<int64_t> HistoryStore::lengths() const {
  std::vector<int64_t> out;
  for (const auto& h : histories_) out.push_back(static_cast<int64_t>(kept(h.size())));
  return out;
}

std::vector<int64_t> HistoryStore::flat_items() const {
  std::vector<int64_t> out;
  for (const auto& h : histories_) out.insert(out.end(), h.end() - static_cast<std::ptrdiff_t>(kept(h.size())), h.end());
  return out;
}

HistoryStore HistoryStore::restore(int64_t keep, const std::string& users, const std::vector<int64_t>& lengths,
                                   const std::vector<int64_t>& items) {
  HistoryStore store(keep);
  store.users_ = IdMap::deserialize(users, 0);
  if (lengths.size() != store.users_.size()) throw std::runtime_error("history store: user count and lengths differ");
  size_t at = 0;
  for (int64_t n : lengths) {
    if (n < 0 || at + n > items.size()) throw std::runtime_error("history store: corrupt lengths");
    const auto kept = static_cast<int64_t>(store.kept(static_cast<size_t>(n)));
    store.histories_.emplace_back(items.begin() + at + (n - kept), items.begin() + at + n);
    store.is_unsettled_.push_back(false);
    at += n;
  }
  if (at != items.size()) throw std::runtime_error("history store: corrupt item array");
  return store;
}

}  // namespace freshrec
