// OAuth2 token endpoint answer (issue 9): arbitrary bytes as the JSON body.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "mailcar/oauth2.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size > 128 * 1024) return 0;
  std::string_view body(reinterpret_cast<const char*>(data), size);
  auto parsed = mailcar::oauth2::parse_token_response(body);
  if (parsed.ok() && size > mailcar::oauth2::kMaxTokenResponseBytes) __builtin_trap();
  if (!parsed.ok() && parsed.error().message.empty()) __builtin_trap();
  return 0;
}
