// Sender restrictions (SPEC §3): which From / MAIL FROM addresses a role may use.
//
// Pattern forms: an exact address, `*@domain` (that domain only), `*@*.domain` (strict
// subdomains of domain, not domain itself), or `*` (anything, including the null sender).
// Local parts compare exactly (case-sensitive, quotes and `+tag` included). Domains compare
// in one normal form (normalize_domain): ASCII letters lower-cased, one trailing dot dropped,
// and each punycode A-label (`xn--...`) decoded to its UTF-8 U-label, so `xn--bcher-kva.de`
// and `bücher.de` are the same domain. Non-ASCII letters are not case-folded (IDNA2008
// U-labels are lower case already).
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_set>

namespace mailcar {

struct AddressParts {
  std::string local;   // as given
  std::string domain;  // as given
};

// Splits an addr-spec at its last '@' (a quoted local part may itself hold '@').
// nullopt when there is no '@' or either side is empty.
std::optional<AddressParts> split_address(std::string_view address);

// The normal form domains are compared in (see above). Invalid punycode labels stay as given.
std::string normalize_domain(std::string_view domain);

// RFC 3492 punycode decoding of the part after `xn--`, to UTF-8. nullopt when invalid.
std::optional<std::string> punycode_decode_utf8(std::string_view input);

// A precompiled set of sender patterns: every check is O(labels of the domain), whatever
// the number of patterns.
class SenderPatterns {
 public:
  // Adds one pattern; false (nothing added) when it is none of the four forms.
  bool add(std::string_view pattern);
  // True when `address` matches a pattern. The empty address (null sender `<>`) matches
  // only `*`.
  bool matches(std::string_view address) const;
  bool allows_any() const { return any_; }
  size_t size() const { return size_; }

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  using StringSet = std::unordered_set<std::string, Hash, std::equal_to<>>;

  bool any_ = false;
  size_t size_ = 0;
  StringSet exact_;           // "local@normalized-domain"
  StringSet domains_;         // *@domain
  StringSet parent_domains_;  // *@*.domain
};

}  // namespace mailcar
