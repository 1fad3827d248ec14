// A GoogleTest fixture with a real libuv loop. TearDown runs the loop until every handle is
// closed and every piece of work has ended, then asserts that uv_loop_close() succeeds: a
// leaked handle or request fails the test. Subclasses that override TearDown release what
// they own first, then call LoopFixture::TearDown().
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>
#include <uv.h>

#include <cstdint>
#include <functional>

namespace mailcar::testing {

class LoopFixture : public ::testing::Test {
 protected:
  void SetUp() override { ASSERT_EQ(uv_loop_init(&loop_), 0); }

  void TearDown() override {
    // Up to 10 s for close callbacks and thread-pool work (a slow CI disk).
    for (int i = 0; i < 10'000 && uv_loop_alive(&loop_); ++i) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      usleep(1000);
    }
    ASSERT_EQ(uv_loop_close(&loop_), 0) << "a libuv handle or request was left behind";
  }

  uv_loop_t* loop() { return &loop_; }

  // Runs the loop until done() or the timeout (generous: a slow CI machine).
  bool run_until(const std::function<bool()>& done, uint64_t timeout_ms = 10'000) {
    const uint64_t deadline = uv_hrtime() + timeout_ms * 1'000'000;
    while (!done() && uv_hrtime() < deadline) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      if (!done()) usleep(500);
    }
    return done();
  }

 private:
  uv_loop_t loop_{};
};

}  // namespace mailcar::testing
