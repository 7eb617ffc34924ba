// splitmix64 (Steele, Lea and Flood 2014): a well-mixed 64-bit value of a counter or key, for seeds and
// hashes that must be the same on every machine and run. Torch-free, header-only.
#pragma once

#include <cstdint>

namespace freshrec {

// The finaliser alone: a bijective mix of the 64 bits.
inline uint64_t splitmix64_finalise(uint64_t x) {
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

// The generator's output for state `x`: the golden-ratio increment, then the finaliser.
inline uint64_t splitmix64(uint64_t x) { return splitmix64_finalise(x + 0x9e3779b97f4a7c15ULL); }

}  // namespace freshrec
