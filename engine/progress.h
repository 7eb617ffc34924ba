// Progress lines for long work: step, rate, ETA and the running loss, at most every few seconds.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace freshrec {

class Progress {
 public:
  Progress(std::string label, int64_t total, double every_seconds);
  // True when `every_seconds` have passed since the last line, or at the last step.
  bool due(int64_t done) const;
  void log(int64_t done, double loss);
  double elapsed_seconds() const;

 private:
  using Clock = std::chrono::steady_clock;
  std::string label_;
  int64_t total_;
  double every_seconds_;
  Clock::time_point start_, last_;
};

}  // namespace freshrec
