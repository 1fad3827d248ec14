#include <utility>

#include "mailcar/net.hpp"

namespace mailcar::net {

Deadline::Deadline(uv_loop_t* loop, std::function<void()> on_expired)
    : loop_(loop), on_expired_(std::move(on_expired)), timer_(loop) {}

uint64_t Deadline::now() const {
  return uv_now(loop_);
}

void Deadline::set(uint64_t at_ms) {
  at_ = at_ms;
  armed_ = true;
  if (!timer_.active() || at_ms < timer_at_) arm(at_ms);
}

void Deadline::clear() {
  armed_ = false;
  timer_.stop();
}

void Deadline::arm(uint64_t at_ms) {
  uint64_t current = now();
  timer_at_ = at_ms;
  timer_.start(at_ms > current ? at_ms - current : 0, [this] { fired(); });
}

void Deadline::fired() {
  if (!armed_) return;
  if (now() < at_) {  // moved later since the timer was started
    arm(at_);
    return;
  }
  armed_ = false;
  on_expired_();  // last: it may destroy *this
}

}  // namespace mailcar::net
