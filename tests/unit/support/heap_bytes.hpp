// Bytes in use on the heap, from glibc's mallinfo2() (every arena, plus mmapped blocks), for
// tests that bound what something keeps in memory per item.
#pragma once

#include <cstddef>
#include <new>
#include <optional>

#if defined(__GLIBC__)
#include <malloc.h>
#endif

namespace mailcar::testing {

inline size_t heap_bytes_raw() {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 33))
  struct mallinfo2 info = ::mallinfo2();
  return info.uordblks + info.hblkhd;
#else
  return 0;
#endif
}

// nullopt when this allocator does not report through mallinfo2 (a sanitizer's own
// allocator, another libc): checked by watching a 4 MiB block come and go.
inline std::optional<size_t> heap_bytes() {
  constexpr size_t kProbe = size_t{4} << 20;
  size_t before = heap_bytes_raw();
  // A call of ::operator new itself, not a new-expression: the compiler may not elide it.
  void* volatile block = ::operator new(kProbe);
  size_t during = heap_bytes_raw();
  ::operator delete(block);
  if (during < before + kProbe) return std::nullopt;
  return heap_bytes_raw();
}

}  // namespace mailcar::testing
