// Adds the wall time of a scope to a counter (the stream's profile of where its time went).
#pragma once

#include <chrono>

namespace freshrec {

class Stopwatch {
 public:
  explicit Stopwatch(double& into) : into_(into), started_(std::chrono::steady_clock::now()) {}
  ~Stopwatch() { into_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - started_).count(); }
  Stopwatch(const Stopwatch&) = delete;
  Stopwatch& operator=(const Stopwatch&) = delete;

 private:
  double& into_;
  std::chrono::steady_clock::time_point started_;
};

}  // namespace freshrec
