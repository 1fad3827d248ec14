#include "mailcar/scan.hpp"

#include "common/scan_kernels.hpp"

#include <bit>
#include <cstdint>
#include <cstring>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__)
#include <immintrin.h>
#endif

namespace mailcar::text {

namespace kernels {
namespace {
bool g_allow_avx2 = true;
}  // namespace

bool have_avx2() {
#if defined(__x86_64__) && defined(__GNUC__)
  static const bool cpu = __builtin_cpu_supports("avx2");
  return cpu && g_allow_avx2;
#else
  return false;
#endif
}

void allow_avx2(bool allowed) {
  g_allow_avx2 = allowed;
}

}  // namespace kernels

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

#if defined(__SSE2__)
// CR and LF positions of 64 bytes as one mask; NUL and high bytes folded into accumulators
// that are looked at once at the end.
uint64_t line_ends_64(const char* p, __m128i& nul, __m128i& high) {
  uint64_t eol = 0;
  for (int k = 0; k < 4; ++k) {
    __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p + 16 * k));
    nul = _mm_or_si128(nul, _mm_cmpeq_epi8(v, _mm_setzero_si128()));
    high = _mm_or_si128(high, v);
    __m128i e = _mm_or_si128(_mm_cmpeq_epi8(v, _mm_set1_epi8('\r')),
                             _mm_cmpeq_epi8(v, _mm_set1_epi8('\n')));
    eol |= static_cast<uint64_t>(static_cast<uint32_t>(_mm_movemask_epi8(e))) << (16 * k);
  }
  return eol;
}

size_t count_high(std::string_view s) {
  size_t n = 0;
  const char* p = s.data();
  const char* end = p + s.size();
  for (; p < end; p += kBlock) {
    size_t left = static_cast<size_t>(end - p);
    n += static_cast<size_t>(
        std::popcount(static_cast<uint32_t>(_mm_movemask_epi8(load(p, left))) & valid_mask(left)));
  }
  return n;
}

#endif

// ---- The 64-byte block loops, once per instruction set. Each namespace defines the same
// functions; the loops that are the same but for their vectors are in scan_blocks.inc, which
// each includes. The AVX2 ones run only where kernels::have_avx2().
#if defined(__SSE2__)
namespace sse2 {

// Bit i set where p[i] == c, for the 64 bytes at p.
uint64_t mask_64(const char* p, char c) {
  const auto* v = reinterpret_cast<const __m128i*>(p);
  __m128i n = _mm_set1_epi8(c);
  uint64_t m = 0;
  for (int k = 0; k < 4; ++k) {
    auto bits = static_cast<uint32_t>(_mm_movemask_epi8(_mm_cmpeq_epi8(_mm_loadu_si128(v + k), n)));
    m |= static_cast<uint64_t>(bits) << (16 * k);
  }
  return m;
}

// Bytes in whole blocks from p without a byte below 14 (so no CR, LF or NUL); `high` is set
// when such a block holds a byte >= 0x80.
size_t no_control_blocks(const char* p, const char* end, bool& high) {
  const char* b = p;
  __m128i any = _mm_setzero_si128();
  for (; end - b >= 64; b += 64) {
    const auto* v = reinterpret_cast<const __m128i*>(b);
    __m128i w = _mm_loadu_si128(v), x = _mm_loadu_si128(v + 1);
    __m128i y = _mm_loadu_si128(v + 2), z = _mm_loadu_si128(v + 3);
    __m128i low = _mm_min_epu8(_mm_min_epu8(w, x), _mm_min_epu8(y, z));
    // Saturating 14 - min is zero in every byte exactly when each byte is >= 14.
    __m128i below = _mm_subs_epu8(_mm_set1_epi8(14), low);
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(below, _mm_setzero_si128())) != 0xFFFF) break;
    any = _mm_or_si128(any, _mm_or_si128(_mm_or_si128(w, x), _mm_or_si128(y, z)));
  }
  if (_mm_movemask_epi8(any)) high = true;
  return static_cast<size_t>(b - p);
}

// Bytes in whole blocks from p made only of bytes 32..126 other than '=': byte - 32
// (wrapping) is at most 94, one unsigned maximum and one equality per vector.
size_t qp_literal_blocks(const char* p, const char* end) {
  const __m128i k32 = _mm_set1_epi8(32);
  const __m128i eq = _mm_set1_epi8('=');
  const char* b = p;
  for (; end - b >= 64; b += 64) {
    const auto* v = reinterpret_cast<const __m128i*>(b);
    __m128i w = _mm_loadu_si128(v), x = _mm_loadu_si128(v + 1);
    __m128i y = _mm_loadu_si128(v + 2), z = _mm_loadu_si128(v + 3);
    __m128i top = _mm_max_epu8(_mm_max_epu8(_mm_sub_epi8(w, k32), _mm_sub_epi8(x, k32)),
                               _mm_max_epu8(_mm_sub_epi8(y, k32), _mm_sub_epi8(z, k32)));
    __m128i equals = _mm_or_si128(_mm_or_si128(_mm_cmpeq_epi8(w, eq), _mm_cmpeq_epi8(x, eq)),
                                  _mm_or_si128(_mm_cmpeq_epi8(y, eq), _mm_cmpeq_epi8(z, eq)));
    __m128i bad = _mm_or_si128(_mm_subs_epu8(top, _mm_set1_epi8(94)), equals);
    if (_mm_movemask_epi8(_mm_cmpeq_epi8(bad, _mm_setzero_si128())) != 0xFFFF) break;
  }
  return static_cast<size_t>(b - p);
}

// byte_flags over whole blocks from p, p left after them: the blocks' OR has the high bit
// set where a byte is >= 0x80, their unsigned minimum a zero where a byte is NUL.
void flag_blocks(const char*& p, const char* end, ByteFlags& flags) {
  __m128i any = _mm_setzero_si128();
  __m128i low = _mm_set1_epi8(-1);
  for (; end - p >= 64; p += 64) {
    const auto* v = reinterpret_cast<const __m128i*>(p);
    __m128i a = _mm_loadu_si128(v), b = _mm_loadu_si128(v + 1);
    __m128i c = _mm_loadu_si128(v + 2), d = _mm_loadu_si128(v + 3);
    any = _mm_or_si128(any, _mm_or_si128(_mm_or_si128(a, b), _mm_or_si128(c, d)));
    low = _mm_min_epu8(low, _mm_min_epu8(_mm_min_epu8(a, b), _mm_min_epu8(c, d)));
  }
  if (_mm_movemask_epi8(any) != 0) flags.high = true;
  if (_mm_movemask_epi8(_mm_cmpeq_epi8(low, _mm_setzero_si128())) != 0) flags.nul = true;
}

#include "common/scan_blocks.inc"

}  // namespace sse2
#endif

#if defined(__x86_64__) && defined(__GNUC__)
#define MAILCAR_SCAN_AVX2 1
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2")
#endif
namespace avx2 {

// The SSE2 functions' contracts, 32 bytes per vector.
uint64_t mask_64(const char* p, char c) {
  __m256i n = _mm256_set1_epi8(c);
  auto lo = static_cast<uint32_t>(_mm256_movemask_epi8(
      _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), n)));
  auto hi = static_cast<uint32_t>(_mm256_movemask_epi8(
      _mm256_cmpeq_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32)), n)));
  return lo | static_cast<uint64_t>(hi) << 32;
}

size_t no_control_blocks(const char* p, const char* end, bool& high) {
  const char* b = p;
  const __m256i k14 = _mm256_set1_epi8(14);
  __m256i any = _mm256_setzero_si256();
  for (; end - b >= 64; b += 64) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
    __m256i below = _mm256_subs_epu8(k14, _mm256_min_epu8(x, y));
    if (!_mm256_testz_si256(below, below)) break;
    any = _mm256_or_si256(any, _mm256_or_si256(x, y));
  }
  if (_mm256_movemask_epi8(any)) high = true;
  return static_cast<size_t>(b - p);
}

size_t qp_literal_blocks(const char* p, const char* end) {
  const char* b = p;
  const __m256i k32 = _mm256_set1_epi8(32);
  const __m256i k94 = _mm256_set1_epi8(94);
  const __m256i eq = _mm256_set1_epi8('=');
  for (; end - b >= 64; b += 64) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b));
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + 32));
    __m256i top = _mm256_max_epu8(_mm256_sub_epi8(x, k32), _mm256_sub_epi8(y, k32));
    __m256i bad =
        _mm256_or_si256(_mm256_subs_epu8(top, k94),
                        _mm256_or_si256(_mm256_cmpeq_epi8(x, eq), _mm256_cmpeq_epi8(y, eq)));
    if (!_mm256_testz_si256(bad, bad)) break;
  }
  return static_cast<size_t>(b - p);
}

void flag_blocks(const char*& p, const char* end, ByteFlags& flags) {
  __m256i any = _mm256_setzero_si256();
  __m256i low = _mm256_set1_epi8(-1);
  for (; end - p >= 64; p += 64) {
    __m256i x = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    __m256i y = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32));
    any = _mm256_or_si256(any, _mm256_or_si256(x, y));
    low = _mm256_min_epu8(low, _mm256_min_epu8(x, y));
  }
  if (_mm256_movemask_epi8(any) != 0) flags.high = true;
  __m256i zero = _mm256_cmpeq_epi8(low, _mm256_setzero_si256());
  if (!_mm256_testz_si256(zero, zero)) flags.nul = true;
}

#include "common/scan_blocks.inc"

}  // namespace avx2
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif

#if defined(MAILCAR_SCAN_AVX2)
bool use_avx2() {
  return kernels::have_avx2();
}
#elif defined(__SSE2__)
namespace avx2 = sse2;  // never taken: use_avx2() is false
constexpr bool use_avx2() {
  return false;
}
#endif

}  // namespace

TextSummary summarize_text(std::string_view s) {
  TextSummary sum;
  const char* p = s.data();
  const char* end = p + s.size();
  LineTracker lines{end, p, sum};
#if defined(__SSE2__)
  __m128i nul = _mm_setzero_si128();
  __m128i high = _mm_setzero_si128();
  // Inside a long line most blocks hold no line end, and a cheaper test passes them; in
  // short-lined text it would fail nearly every time, so it is tried only after a block
  // without a line end.
  bool in_long_line = true;
  bool high_seen = false;
  while (end - p >= 64) {
    if (in_long_line) {
      p += use_avx2() ? avx2::no_control_blocks(p, end, high_seen)
                      : sse2::no_control_blocks(p, end, high_seen);
      if (end - p < 64) break;
    }
    uint64_t eol = line_ends_64(p, nul, high);
    in_long_line = eol == 0;
    for (; eol; eol &= eol - 1) lines.line_end_at(p + std::countr_zero(eol));
    p += 64;
  }
  for (; p < end; p += kBlock) {
    size_t n = static_cast<size_t>(end - p);
    __m128i v = load(p, n);  // zero-padded: the padding is no NUL, see valid_mask
    if (eq_mask(v, '\0') & valid_mask(n)) sum.nul = true;
    high = _mm_or_si128(high, v);
    uint32_t eol = (eq_mask(v, '\r') | eq_mask(v, '\n')) & valid_mask(n);
    for (; eol; eol &= eol - 1) lines.line_end_at(p + std::countr_zero(eol));
  }
  if (_mm_movemask_epi8(nul)) sum.nul = true;
  if (high_seen || _mm_movemask_epi8(high)) sum.high_bytes = count_high(s);
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

const char* plain_crlf_lines(const char* p, const char* end, size_t first_line_length,
                             size_t max_line) {
#if defined(__SSE2__)
  if (max_line < 64) return p;
  return use_avx2() ? avx2::plain_crlf_blocks(p, end, first_line_length, max_line)
                    : sse2::plain_crlf_blocks(p, end, first_line_length, max_line);
#else
  // A byte at a time: the same run, so the callers and tests behave alike everywhere.
  const char* safe = p;
  size_t line = first_line_length;
  for (const char* q = p; q < end; ++q) {
    if (*q == '\n') break;  // a bare LF
    if (*q != '\r') {
      ++line;
      continue;
    }
    if (line > max_line || q + 2 >= end || q[1] != '\n' || q[2] == '.') break;
    safe = ++q + 1;
    line = 0;
  }
  return safe;
#endif
}

const char* find_dot_after_lf(const char* p, const char* end) {
  const char* start = p;
#if defined(__SSE2__)
  const char* hit =
      use_avx2() ? avx2::dot_after_lf_blocks(p, end) : sse2::dot_after_lf_blocks(p, end);
  if (hit != nullptr) return hit;
#endif
  for (; p < end; ++p) {
    if (*p == '.' && p > start && p[-1] == '\n') return p;
  }
  return end;
}

bool has_high_byte(std::string_view s) {
  const char* p = s.data();
  const char* end = p + s.size();
#if defined(__SSE2__)
  for (; end - p >= 64; p += 64) {  // four blocks folded into one test
    const auto* v = reinterpret_cast<const __m128i*>(p);
    __m128i any = _mm_or_si128(_mm_or_si128(_mm_loadu_si128(v), _mm_loadu_si128(v + 1)),
                               _mm_or_si128(_mm_loadu_si128(v + 2), _mm_loadu_si128(v + 3)));
    if (_mm_movemask_epi8(any)) return true;
  }
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

ByteFlags byte_flags(std::string_view s) {
  ByteFlags flags;
  const char* p = s.data();
  const char* end = p + s.size();
#if defined(__SSE2__)
  if (use_avx2()) {
    avx2::flag_blocks(p, end, flags);
  } else {
    sse2::flag_blocks(p, end, flags);
  }
  for (; p < end; p += kBlock) {
    size_t n = static_cast<size_t>(end - p);
    __m128i v = load(p, n);  // zero-padded: the padding is no NUL, see valid_mask
    if (static_cast<uint32_t>(_mm_movemask_epi8(v)) & valid_mask(n)) flags.high = true;
    if (eq_mask(v, '\0') & valid_mask(n)) flags.nul = true;
  }
#else
  for (; p < end; ++p) {
    auto c = static_cast<unsigned char>(*p);
    if (c >= 0x80) flags.high = true;
    if (c == 0) flags.nul = true;
  }
#endif
  return flags;
}

size_t qp_literal_prefix(std::string_view s) {
  const char* p = s.data();
  const char* end = p + s.size();
#if defined(__SSE2__)
  // The first block it stops at is looked into below.
  p += use_avx2() ? avx2::qp_literal_blocks(p, end) : sse2::qp_literal_blocks(p, end);
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
