// One rate window "N per T" as a GCRA (generic cell rate algorithm) limiter (SPEC §6).
//
// State is one number, the theoretical arrival time (TAT). Emission interval T/N, burst
// tolerance T - T/N: a request of cost c at time `now` passes iff
//   max(TAT, now) + c*T/N - now <= T.
// Time is kept in units of 1/N millisecond, so T/N is exactly T units and nothing drifts,
// whatever N is (128-bit arithmetic: N up to 2^64, T up to days). Pure: time is passed in.
#pragma once

#include <cstdint>

namespace mailcar {

class RateLimiter {
 public:
  // count: N cells per period_ms. count == 0 lets only cost-0 requests pass.
  RateLimiter(uint64_t count, uint64_t period_ms);

  struct Judgement {
    bool allowed = false;
    bool never = false;           // cost > N: no wait makes it pass
    uint64_t retry_after_ms = 0;  // refused: ms until the same request would pass (>= 1)
    uint64_t remaining = 0;       // cells left (after this request when allowed)
    uint64_t reset_ms = 0;        // ms until the window is fully replenished (ditto)
  };

  // Judges a request of `cost` cells at `now_ms` without changing state.
  Judgement judge(uint64_t cost, uint64_t now_ms) const;
  // Consumes `cost` cells at `now_ms`; call only after judge() allowed it.
  void consume(uint64_t cost, uint64_t now_ms);

  uint64_t count() const { return count_; }
  uint64_t period_ms() const { return period_ms_; }

  // TAT as wall-clock ms, rounded up (conservative), for persistence; 0 when never used.
  uint64_t tat_ms() const;
  void set_tat_ms(uint64_t tat_ms);
  // Copies the state of another limiter with the same N and T.
  void copy_state_from(const RateLimiter& other) { tat_ = other.tat_; }

 private:
  __extension__ using Wide = unsigned __int128;

  // TAT clamped to now + T: a clock that went back, or a bad restored value, never blocks
  // longer than one window.
  Wide effective_tat(Wide now) const;

  uint64_t count_;
  uint64_t period_ms_;
  Wide tat_ = 0;  // in units of 1/count_ ms
};

}  // namespace mailcar
