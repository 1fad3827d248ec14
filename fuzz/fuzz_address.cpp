// libFuzzer: address validation and RFC 5322 address-list parsing must never crash, and what
// they accept must hold their own invariants.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "mailcar/address.hpp"
#include "mailcar/mime.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  using namespace mailcar;
  if (auto a = validate_address(in); a.ok()) {
    // An accepted address is safe to put on an SMTP command line and validates again as is.
    if (a->find_first_of("\r\n") != std::string::npos || a->size() > 254) std::abort();
    if (!validate_address(*a).ok() || *validate_address(*a) != *a) std::abort();
    if (address_domain(*a).empty() || address_local(*a).empty()) std::abort();
  }
  if (auto list = parse_address_list(in); list.ok()) {
    for (const auto& m : *list) {
      if (!validate_address(m.address).ok()) std::abort();
      // What the parser gives back the builder can format, and it parses back the same.
      if (m.name.find_first_of(std::string_view("\r\n\0", 3)) == std::string::npos &&
          is_valid_utf8(m.name)) {
        auto again = parse_address_list(format_mailbox(m));
        if (!again.ok() || again->size() != 1 || (*again)[0].address != m.address) std::abort();
      }
    }
  }
  return 0;
}
