// HTTP/1.1 response parser (egress client, issue 9): arbitrary server bytes, fed in pieces
// whose size the first byte picks, then EOF. The parser must stop at Done or Error, keep the
// body within its limit and repeat its final status.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mailcar/http_client.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0 || size > 256 * 1024) return 0;
  using mailcar::http_client::ResponseParser;
  const size_t step = static_cast<size_t>(data[0] & 0x3f) + 1;
  const bool head_only = (data[0] & 0x40) != 0;
  constexpr size_t kLimit = 4096;
  ResponseParser parser(kLimit, head_only);
  std::string_view input(reinterpret_cast<const char*>(data) + 1, size - 1);
  ResponseParser::Status status = ResponseParser::Status::NeedMore;
  while (!input.empty()) {
    std::string_view piece = input.substr(0, step);
    input.remove_prefix(piece.size());
    status = parser.feed(piece);
    if (parser.response().body.size() > kLimit) __builtin_trap();
  }
  if (status == ResponseParser::Status::NeedMore) status = parser.finish();
  if (status == ResponseParser::Status::NeedMore) __builtin_trap();
  if (parser.feed("HTTP/1.1 200 OK\r\n\r\n") != status) __builtin_trap();
  if (status == ResponseParser::Status::Done) {
    const int code = parser.response().status;
    if (code < 100 || code > 999) __builtin_trap();
    if (head_only && !parser.response().body.empty()) __builtin_trap();
  }
  return 0;
}
