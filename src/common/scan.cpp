#include "mailcar/scan.hpp"

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace mailcar::text {
namespace {

#if defined(__SSE2__)
constexpr size_t kBlock = 16;

// Up to 16 bytes at p (n of them valid) as a vector; bytes past n are zero. Never reads
// past p + n.
__m128i load(const char* p, size_t n) {
  if (n >= kBlock) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) char buf[kBlock] = {};
  std::memcpy(buf, p, n);
  return _mm_load_si128(reinterpret_cast<const __m128i*>(buf));
}

uint32_t valid_mask(size_t n) {
  return n >= kBlock ? 0xFFFFu : (1u << n) - 1u;
}

uint32_t eq_mask(__m128i v, char c) {
  return static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(v, _mm_set1_epi8(c))));
}
#endif

// Line bookkeeping for summarize_text, called at each CR or LF.
struct LineTracker {
  const char* begin;
  const char* end;
  const char* line_start;
  TextSummary& sum;

  void line_end_at(const char* q) {
    const char* content_end = q;
    if (*q == '\r') {
      if (q + 1 < end && q[1] == '\n') return;  // the LF ends this line
      sum.bare_line_end = true;
    } else if (q > line_start && q[-1] == '\r') {
      content_end = q - 1;
    } else {
      sum.bare_line_end = true;
    }
    size_t len = static_cast<size_t>(content_end - line_start);
    if (len > sum.longest_line) sum.longest_line = len;
    line_start = q + 1;
  }
};

}  // namespace

TextSummary summarize_text(std::string_view s) {
  TextSummary sum;
  const char* p = s.data();
  const char* end = p + s.size();
  LineTracker lines{p, end, p, sum};
#if defined(__SSE2__)
  for (; p < end; p += kBlock) {
    size_t n = static_cast<size_t>(end - p);
    __m128i v = load(p, n);
    uint32_t valid = valid_mask(n);
    auto high = static_cast<uint32_t>(_mm_movemask_epi8(v)) & valid;
    if (high) sum.high_bytes += static_cast<size_t>(std::popcount(high));
    if (eq_mask(v, '\0') & valid) sum.nul = true;
    uint32_t eol = (eq_mask(v, '\r') | eq_mask(v, '\n')) & valid;
    while (eol) {
      lines.line_end_at(p + std::countr_zero(eol));
      eol &= eol - 1;
    }
  }
#else
  for (; p < end; ++p) {
    auto c = static_cast<unsigned char>(*p);
    if (c >= 0x80) ++sum.high_bytes;
    if (c == 0) sum.nul = true;
    if (c == '\r' || c == '\n') lines.line_end_at(p);
  }
#endif
  size_t last = static_cast<size_t>(end - lines.line_start);
  if (last > sum.longest_line) sum.longest_line = last;
  return sum;
}

const char* find_line_end(const char* p, const char* end) {
#if defined(__SSE2__)
  for (; p < end; p += kBlock) {
    size_t n = static_cast<size_t>(end - p);
    __m128i v = load(p, n);
    uint32_t eol = (eq_mask(v, '\r') | eq_mask(v, '\n')) & valid_mask(n);
    if (eol) return p + std::countr_zero(eol);
  }
  return end;
#else
  while (p < end && *p != '\r' && *p != '\n') ++p;
  return p;
#endif
}

bool has_high_byte(std::string_view s) {
  const char* p = s.data();
  const char* end = p + s.size();
#if defined(__SSE2__)
  for (; p < end; p += kBlock) {
    size_t n = static_cast<size_t>(end - p);
    if (static_cast<uint32_t>(_mm_movemask_epi8(load(p, n))) & valid_mask(n)) return true;
  }
  return false;
#else
  for (; p < end; ++p) {
    if (static_cast<unsigned char>(*p) >= 0x80) return true;
  }
  return false;
#endif
}

size_t qp_literal_prefix(std::string_view s) {
  const char* p = s.data();
  const char* end = p + s.size();
#if defined(__SSE2__)
  for (; end - p >= static_cast<ptrdiff_t>(kBlock); p += kBlock) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
    // Signed compare: bytes >= 0x80 are negative, so "> 31" also rules them out.
    __m128i ok = _mm_cmpgt_epi8(v, _mm_set1_epi8(31));
    auto good = static_cast<uint32_t>(_mm_movemask_epi8(ok)) & ~eq_mask(v, '=') & ~eq_mask(v, 127);
    if (good != 0xFFFFu) return static_cast<size_t>(p - s.data()) + std::countr_one(good);
  }
#endif
  for (; p < end; ++p) {
    auto c = static_cast<unsigned char>(*p);
    if (c < 32 || c > 126 || c == '=') break;
  }
  return static_cast<size_t>(p - s.data());
}

}  // namespace mailcar::text
