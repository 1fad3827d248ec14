// The small file that carries rate-limit state across restarts (issue 4), written off the
// loop thread: temp file, fsync, rename.
#pragma once

#include <string>

#include <uv.h>

#include "mailcar/result.hpp"

namespace mailcar {

// Blocking; for start-up only. A missing file is an empty state, not an error.
Result<std::string> read_state_file(const std::string& path);
// Blocking write (temp, fsync, rename); for the thread pool and for the very last save.
Result<void> write_state_file(const std::string& path, const std::string& data);
// Runs write_state_file on libuv's thread pool; failures are logged on the loop thread.
void write_state_file_async(uv_loop_t* loop, std::string path, std::string data);

}  // namespace mailcar
