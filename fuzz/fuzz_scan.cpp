// libFuzzer: every block scanner of mailcar/scan.hpp against a byte-at-a-time reference, on
// the SSE2 loops and (where the CPU has it) the AVX2 loops. The first byte picks where the
// scanned text starts (so blocks fall at every alignment) and the DATA scanner's limits; a
// 0x01 byte stands for 100 'x', so runs that cross many 64-byte blocks are easy to reach.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "common/scan_kernels.hpp"
#include "expand_runs.hpp"
#include "mailcar/scan.hpp"
#include "support/scan_reference.hpp"

namespace {

using namespace mailcar::text;

void check(bool ok) {
  if (!ok) std::abort();
}

void check_all(std::string_view v, size_t first_line, size_t max_line) {
  const char* b = v.data();
  const char* e = b + v.size();
  TextSummary got = summarize_text(v), want = reference::summary(v);
  check(got.longest_line == want.longest_line && got.high_bytes == want.high_bytes &&
        got.nul == want.nul && got.bare_line_end == want.bare_line_end);

  size_t eol = v.find_first_of("\r\n");
  check(find_line_end(b, e) == (eol == std::string_view::npos ? e : b + eol));

  bool high = std::any_of(v.begin(), v.end(), [](char c) { return (c & 0x80) != 0; });
  check(has_high_byte(v) == high);
  ByteFlags flags = byte_flags(v);
  check(flags.high == high && flags.nul == (v.find('\0') != std::string_view::npos));

  size_t dot = v.find("\n.");
  check(find_dot_after_lf(b, e) == (dot == std::string_view::npos ? e : b + dot + 1));

  check(qp_literal_prefix(v) == reference::qp_literal(v));

  // May stop early, never late, and always at a line end it may pass.
  const char* run = plain_crlf_lines(b, e, first_line, max_line);
  size_t passed = static_cast<size_t>(run - b);
  check(passed <= reference::plain_run(v, first_line, max_line));
  check(passed == 0 || (v[passed - 2] == '\r' && v[passed - 1] == '\n'));
  check(reference::plain_run(v.substr(0, passed + (passed < v.size() ? 1 : 0)), first_line,
                             max_line) >= passed);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const std::string raw = expand_runs(data + 1, size - 1, 100, 1 << 18);
  const size_t offset = std::min<size_t>(data[0] & 63, raw.size());
  const size_t first_line = (data[0] >> 6) * 30;
  const size_t max_line = (data[0] & 0x80) ? 998 : 200;
  const std::string_view v = std::string_view(raw).substr(offset);
  for (bool avx2 : {false, true}) {
    kernels::allow_avx2(avx2);
    if (avx2 && !kernels::have_avx2()) break;
    check_all(v, first_line, max_line);
  }
  kernels::allow_avx2(true);
  return 0;
}
