// Shared pieces of the spool tests: sample records, a temp folder, a real libuv loop that
// must close cleanly.
#pragma once

#include <dirent.h>
#include <gtest/gtest.h>
#include <unistd.h>
#include <uv.h>

#include <algorithm>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>
#include <vector>

#include "mailcar/spool.hpp"

namespace mailcar::testing {

// A record that exercises the escaping: spaces, '%', '-', CR/LF, UTF-8, ORCPT, NOTIFY.
inline SpoolRecord sample_record(std::string id, std::string service = "mail") {
  SpoolRecord r;
  r.id = std::move(id);
  r.service = std::move(service);
  r.role = "app role%";
  r.identity = "smtp:legacy app";
  r.ingress = Ingress::Smtp;
  r.remote = "127.0.0.1:4321";
  r.envelope_from = "sender@example.com";
  r.recipients = {
      {"a@example.com", 0, ""},
      {"b@ex\xc3\xa4mple.com", dsn_notify::kFailure | dsn_notify::kDelay, "rfc822;B@example.com"},
      {"c@example.com", dsn_notify::kNever, "utf-8;c\r\n x"}};
  r.smtputf8 = true;
  r.eight_bit = true;
  r.ret = DsnRet::Headers;
  r.envid = "env id-1";
  r.queued_at_ms = 1'700'000'000'123;
  return r;
}

class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mailcar-spool-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

inline std::vector<std::string> list_dir(const std::string& path) {
  std::vector<std::string> names;
  if (DIR* d = opendir(path.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

inline void spit(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << bytes;
}

// A real loop; the destructor asserts that it closes (no handle or work left behind).
class Loop {
 public:
  Loop() { uv_loop_init(&loop_); }
  ~Loop() {
    for (int i = 0; i < 5000 && uv_loop_alive(&loop_); ++i) {
      uv_run(&loop_, UV_RUN_NOWAIT);
      usleep(1000);
    }
    EXPECT_EQ(uv_loop_close(&loop_), 0);
  }
  Loop(const Loop&) = delete;
  Loop& operator=(const Loop&) = delete;
  uv_loop_t* get() { return &loop_; }

  // Runs until done() or 10 s passed (generous: a slow CI disk).
  bool run_until(const std::function<bool()>& done, uint64_t timeout_ms = 10'000) {
    const uint64_t deadline = uv_hrtime() + timeout_ms * 1'000'000;
    while (!done() && uv_hrtime() < deadline) uv_run(&loop_, UV_RUN_ONCE);
    return done();
  }

 private:
  uv_loop_t loop_;
};

}  // namespace mailcar::testing
