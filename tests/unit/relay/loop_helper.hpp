// A real libuv loop for relay tests: run until a condition holds (bounded), then close cleanly.
#pragma once

#include <unistd.h>
#include <uv.h>

#include <functional>

namespace mailcar::testing {

class TestLoop {
 public:
  TestLoop() { uv_loop_init(&loop_); }
  ~TestLoop() {
    // Let every handle finish closing; bounded so a leak fails loudly instead of hanging.
    for (int i = 0; i < 5000 && uv_loop_alive(&loop_); ++i) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      usleep(1000);
    }
    uv_loop_close(&loop_);
  }
  TestLoop(const TestLoop&) = delete;
  TestLoop& operator=(const TestLoop&) = delete;

  uv_loop_t* get() { return &loop_; }

  // Runs the loop until `done()` is true or `timeout_ms` passed; returns done().
  bool run_until(const std::function<bool()>& done, uint64_t timeout_ms = 5000) {
    const uint64_t deadline = uv_hrtime() + timeout_ms * 1'000'000;
    while (!done() && uv_hrtime() < deadline) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (!done()) usleep(200);
    }
    return done();
  }

 private:
  uv_loop_t loop_;
};

}  // namespace mailcar::testing
