#include "mailcar/sender_pattern.hpp"

#include <cstdint>
#include <vector>

#include "mailcar/text.hpp"

namespace mailcar {
namespace {

// RFC 3492 parameters.
constexpr uint32_t kBase = 36;
constexpr uint32_t kTMin = 1;
constexpr uint32_t kTMax = 26;
constexpr uint32_t kSkew = 38;
constexpr uint32_t kDamp = 700;
constexpr uint32_t kInitialBias = 72;
constexpr uint32_t kInitialN = 128;
constexpr uint32_t kMaxInt = 0xFFFFFFFFu;

uint32_t adapt(uint32_t delta, uint32_t num_points, bool first_time) {
  delta = first_time ? delta / kDamp : delta / 2;
  delta += delta / num_points;
  uint32_t k = 0;
  while (delta > ((kBase - kTMin) * kTMax) / 2) {
    delta /= kBase - kTMin;
    k += kBase;
  }
  return k + (kBase - kTMin + 1) * delta / (delta + kSkew);
}

std::optional<uint32_t> digit_value(char c) {
  if (c >= 'a' && c <= 'z') return static_cast<uint32_t>(c - 'a');
  if (c >= 'A' && c <= 'Z') return static_cast<uint32_t>(c - 'A');
  if (c >= '0' && c <= '9') return static_cast<uint32_t>(c - '0') + 26;
  return std::nullopt;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

// Whether normalize_domain(domain) == domain: no trailing dot, no ASCII capital, no A-label.
bool in_normal_form(std::string_view domain) {
  if (!domain.empty() && domain.back() == '.') return false;
  for (char c : domain) {
    if (c >= 'A' && c <= 'Z') return false;
  }
  return domain.find("xn--") == std::string_view::npos;
}

bool is_punycode_label(std::string_view label) {
  return label.size() > 4 && text::istarts_with_ascii(label, "xn--");
}

}  // namespace

std::optional<std::string> punycode_decode_utf8(std::string_view input) {
  // DNS labels are at most 63 octets; refuse anything longer so decoding stays bounded.
  if (input.size() > 63) return std::nullopt;
  std::vector<uint32_t> output;
  size_t start = 0;
  if (auto delim = input.rfind('-'); delim != std::string_view::npos) {
    for (size_t j = 0; j < delim; ++j) {
      auto c = static_cast<unsigned char>(input[j]);
      if (c >= 0x80) return std::nullopt;
      output.push_back(c);
    }
    start = delim + 1;
  }
  uint32_t n = kInitialN;
  uint32_t i = 0;
  uint32_t bias = kInitialBias;
  size_t in = start;
  while (in < input.size()) {
    uint32_t old_i = i;
    uint32_t w = 1;
    for (uint32_t k = kBase;; k += kBase) {
      if (in >= input.size()) return std::nullopt;
      auto digit = digit_value(input[in++]);
      if (!digit) return std::nullopt;
      if (*digit > (kMaxInt - i) / w) return std::nullopt;
      i += *digit * w;
      uint32_t t = k <= bias ? kTMin : (k >= bias + kTMax ? kTMax : k - bias);
      if (*digit < t) break;
      if (w > kMaxInt / (kBase - t)) return std::nullopt;
      w *= kBase - t;
    }
    auto points = static_cast<uint32_t>(output.size() + 1);
    bias = adapt(i - old_i, points, old_i == 0);
    if (i / points > kMaxInt - n) return std::nullopt;
    n += i / points;
    i %= points;
    if (n > 0x10FFFF || (n >= 0xD800 && n <= 0xDFFF) || n < 0x80) return std::nullopt;
    output.insert(output.begin() + i, n);
    ++i;
  }
  std::string utf8;
  for (uint32_t cp : output) append_utf8(utf8, cp);
  return utf8;
}

std::optional<AddressParts> split_address(std::string_view address) {
  auto at = address.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return std::nullopt;
  return AddressParts{std::string(address.substr(0, at)), std::string(address.substr(at + 1))};
}

std::string normalize_domain(std::string_view domain) {
  if (!domain.empty() && domain.back() == '.') domain.remove_suffix(1);
  std::string lowered = text::lower_ascii(domain);
  if (lowered.find("xn--") == std::string::npos) return lowered;
  std::string out;
  out.reserve(lowered.size());
  size_t pos = 0;
  while (true) {
    size_t dot = lowered.find('.', pos);
    std::string_view label =
        std::string_view(lowered).substr(pos, dot == std::string::npos ? dot : dot - pos);
    std::optional<std::string> decoded;
    if (is_punycode_label(label)) decoded = punycode_decode_utf8(label.substr(4));
    if (decoded) {
      // A decoded label may hold ASCII capitals only if the A-label was malformed; fold anyway.
      out += text::lower_ascii(*decoded);
    } else {
      out += label;
    }
    if (dot == std::string::npos) break;
    out.push_back('.');
    pos = dot + 1;
  }
  return out;
}

bool SenderPatterns::add(std::string_view pattern) {
  if (pattern == "*") {
    any_ = true;
    ++size_;
    return true;
  }
  auto parts = split_address(pattern);
  if (!parts) return false;
  std::string domain = normalize_domain(parts->domain);
  if (parts->local == "*") {
    if (domain.rfind("*.", 0) == 0) {
      std::string parent = domain.substr(2);
      if (parent.empty() || parent.find('*') != std::string::npos) return false;
      parent_domains_.insert(std::move(parent));
    } else {
      if (domain.empty() || domain.find('*') != std::string::npos) return false;
      domains_.insert(std::move(domain));
    }
  } else {
    // `*` is a legal atext character, so `a*b@x` is an exact address; a wildcard domain is not.
    if (domain.empty() || domain.find('*') != std::string::npos) return false;
    exact_.insert(parts->local + "@" + domain);
  }
  ++size_;
  return true;
}

bool SenderPatterns::matches(std::string_view address) const {
  if (any_) return true;
  // Judged on every message: no copy unless the domain needs normalizing.
  const size_t at = address.rfind('@');
  if (at == std::string_view::npos || at == 0 || at + 1 == address.size()) return false;
  std::string_view domain = address.substr(at + 1);
  std::string_view whole = address;  // local@domain in normal form
  std::string normalized;
  std::string joined;
  if (!in_normal_form(domain)) {
    normalized = normalize_domain(domain);
    domain = normalized;
    joined.reserve(at + 1 + normalized.size());
    joined.append(address.substr(0, at + 1)).append(normalized);
    whole = joined;
  }
  if (domain.empty()) return false;
  if (!exact_.empty() && exact_.contains(whole)) return true;
  if (domains_.contains(domain)) return true;
  if (parent_domains_.empty()) return false;
  // Strict subdomains: look up every proper suffix that starts after a dot.
  std::string_view rest(domain);
  for (size_t dot = rest.find('.'); dot != std::string_view::npos; dot = rest.find('.')) {
    rest.remove_prefix(dot + 1);
    if (rest.empty()) break;
    if (parent_domains_.contains(rest)) return true;
  }
  return false;
}

}  // namespace mailcar
