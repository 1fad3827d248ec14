#include <utility>

#include "mailcar/net.hpp"

namespace mailcar::net {

// The uv handle outlives the Timer: its close is asynchronous, so the Handle is freed in the
// close callback. The callback may destroy or restart the Timer while it runs.
struct Timer::Handle {
  uv_timer_t timer;
  std::function<void()> fn;
};

Timer::Timer(uv_loop_t* loop) : handle_(new Handle) {
  uv_timer_init(loop, &handle_->timer);
  handle_->timer.data = handle_;
}

Timer::~Timer() {
  uv_timer_stop(&handle_->timer);
  uv_close(reinterpret_cast<uv_handle_t*>(&handle_->timer),
           [](uv_handle_t* h) { delete static_cast<Handle*>(h->data); });
}

void Timer::start(uint64_t timeout_ms, std::function<void()> fn, uint64_t repeat_ms) {
  handle_->fn = std::move(fn);
  uv_timer_start(
      &handle_->timer,
      [](uv_timer_t* timer) {
        auto* handle = static_cast<Handle*>(timer->data);
        if (uv_timer_get_repeat(timer) == 0) {
          auto once = std::move(handle->fn);  // fn may restart or destroy the Timer
          handle->fn = nullptr;
          if (once) once();
        } else {
          auto each = handle->fn;  // a copy: fn may replace or destroy itself
          if (each) each();
        }
      },
      timeout_ms, repeat_ms);
}

void Timer::stop() {
  uv_timer_stop(&handle_->timer);
  handle_->fn = nullptr;
}

bool Timer::active() const {
  return uv_is_active(reinterpret_cast<const uv_handle_t*>(&handle_->timer)) != 0;
}

}  // namespace mailcar::net
