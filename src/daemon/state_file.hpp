// The small file that carries rate-limit state across restarts (issue 4), written off the
// loop thread: temp file, fsync, rename.
#pragma once

#include <cstddef>
#include <string>

#include <uv.h>

#include "mailcar/result.hpp"

namespace mailcar {

// mailcar writes one short line per rate window that is not replenished; windows come from
// the configuration (at most 1 MiB), so a larger file is not one of ours.
inline constexpr size_t kMaxStateFileBytes = 4 * 1024 * 1024;

// Blocking; for start-up only. A missing file is an empty state, not an error; a file over
// kMaxStateFileBytes is an error.
Result<std::string> read_state_file(const std::string& path);
// Blocking write (temp, fsync, rename); for the thread pool and for the very last save.
Result<void> write_state_file(const std::string& path, const std::string& data);
// Runs write_state_file on libuv's thread pool; failures are logged on the loop thread.
void write_state_file_async(uv_loop_t* loop, std::string path, std::string data);

}  // namespace mailcar
