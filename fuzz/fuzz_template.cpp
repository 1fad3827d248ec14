// libFuzzer: template expansion with a size limit. Input: one byte choosing the limit, then
// the template, then "key\x01value" pairs, all separated by NUL. Checks that the limit holds
// and that a smaller limit never changes an output that fits it.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <map>
#include <string>
#include <string_view>

#include "http/api_handler.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const size_t limit = size_t{data[0]} * 97;
  std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  size_t nul = rest.find('\0');
  std::string_view text = rest.substr(0, nul);
  std::map<std::string, std::string, std::less<>> values;
  while (nul != std::string_view::npos) {
    rest.remove_prefix(nul + 1);
    nul = rest.find('\0');
    std::string_view pair = rest.substr(0, nul);
    size_t sep = pair.find('\x01');
    if (sep == std::string_view::npos) continue;
    // Values repeated up to 64 times: amplification is what the limit is for.
    std::string value;
    for (int i = 0; i < 64; ++i) value.append(pair.substr(sep + 1));
    values.insert_or_assign(std::string(pair.substr(0, sep)), std::move(value));
  }
  auto lookup = [&values](std::string_view key) -> const std::string* {
    auto it = values.find(key);
    return it == values.end() ? nullptr : &it->second;
  };
  auto small = mailcar::http::expand_template(text, lookup, limit);
  auto larger = mailcar::http::expand_template(text, lookup, limit + 4096);
  if (small && small->size() > limit) std::abort();
  if (larger && larger->size() > limit + 4096) std::abort();
  if (small && (!larger || *larger != *small)) std::abort();      // more room: same output
  if (larger && !small && larger->size() <= limit) std::abort();  // it fitted: no refusal
  if (small && values.empty() && *small != text) std::abort();    // nothing to replace
  return 0;
}
