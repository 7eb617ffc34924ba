// Progress lines; see progress.h.
#include "engine/progress.h"

#include <spdlog/spdlog.h>

namespace freshrec {

Progress::Progress(std::string label, int64_t total, double every_seconds)
    : label_(std::move(label)), total_(total), every_seconds_(every_seconds), start_(Clock::now()), last_(start_) {}

double Progress::elapsed_seconds() const {
  return std::chrono::duration<double>(Clock::now() - start_).count();
}

bool Progress::due(int64_t done) const {
  return done >= total_ || std::chrono::duration<double>(Clock::now() - last_).count() >= every_seconds_;
}

void Progress::log(int64_t done, double loss) {
  last_ = Clock::now();
  const double elapsed = elapsed_seconds();
  const double rate = elapsed > 0 ? done / elapsed : 0;
  const double eta = rate > 0 ? (total_ - done) / rate : 0;
  spdlog::info("{} step {}/{} ({:.0f}%) {:.2f} steps/s ETA {:.0f}s loss {:.4f}", label_, done, total_,
               100.0 * done / std::max<int64_t>(total_, 1), rate, eta, loss);
}

}  // namespace freshrec
