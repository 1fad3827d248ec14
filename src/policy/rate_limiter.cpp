#include "mailcar/rate_limiter.hpp"

#include <algorithm>
#include <limits>

namespace mailcar {
namespace {

__extension__ using Wide = unsigned __int128;

uint64_t saturate(Wide v) {
  constexpr auto kMax = std::numeric_limits<uint64_t>::max();
  return v > kMax ? kMax : static_cast<uint64_t>(v);
}

Wide ceil_div(Wide a, Wide b) {
  return a / b + (a % b != 0 ? 1 : 0);
}

}  // namespace

RateLimiter::RateLimiter(uint64_t count, uint64_t period_ms)
    : count_(count), period_ms_(period_ms) {}

RateLimiter::Wide RateLimiter::effective_tat(Wide now) const {
  Wide horizon = now + Wide{period_ms_} * count_;
  return std::min(tat_, horizon);
}

RateLimiter::Judgement RateLimiter::judge(uint64_t cost, uint64_t now_ms) const {
  Judgement j;
  if (count_ == 0 || period_ms_ == 0) {
    // Degenerate windows: N = 0 admits nothing but cost 0; T = 0 never limits.
    j.allowed = cost == 0 || (period_ms_ == 0 && count_ > 0);
    j.never = !j.allowed;
    j.remaining = count_;
    return j;
  }
  const Wide n = count_;
  const Wide t = period_ms_;
  const Wide now = Wide{now_ms} * n;
  const Wide window = t * n;  // T in units
  const Wide tat = effective_tat(now);
  const Wide base = std::max(tat, now);
  if (cost > count_) {
    j.allowed = false;
    j.never = true;
  } else {
    const Wide new_tat = base + Wide{cost} * t;
    j.allowed = new_tat - now <= window;
    if (j.allowed) {
      j.remaining = saturate((window - (new_tat - now)) / t);
      j.reset_ms = saturate(ceil_div(new_tat - now, n));
      return j;
    }
    // It passes at the first ms t' with tat + c*T - T*N <= t' (in units): tat > now here.
    const Wide earliest = ceil_div(tat + Wide{cost} * t - window, n);
    j.retry_after_ms = saturate(std::max<Wide>(earliest - now_ms, 1));
  }
  j.remaining = saturate((window - (base - now)) / t);
  j.reset_ms = saturate(ceil_div(base - now, n));
  return j;
}

void RateLimiter::consume(uint64_t cost, uint64_t now_ms) {
  if (count_ == 0 || period_ms_ == 0 || cost == 0) return;
  const Wide now = Wide{now_ms} * count_;
  tat_ = std::max(effective_tat(now), now) + Wide{cost} * period_ms_;
}

uint64_t RateLimiter::tat_ms() const {
  if (count_ == 0) return 0;
  return saturate(ceil_div(tat_, count_));
}

void RateLimiter::set_tat_ms(uint64_t tat_ms) {
  tat_ = Wide{tat_ms} * count_;
}

}  // namespace mailcar
