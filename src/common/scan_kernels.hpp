// The block loops that run over the inside of long lines, once per instruction set: SSE2
// (every x86-64) and AVX2 (taken at run time when the CPU has it). scan.cpp chooses; tests
// run each against a reference. Each returns how many bytes at the start of [p, p + n) it
// passed, a multiple of 64, stopping at the first 64-byte block it cannot pass. Where
// neither instruction set exists they pass nothing and the callers' byte loops do the work.
#pragma once

#include <cstddef>

namespace mailcar::text::kernels {

// Blocks without a byte below 14 (so no CR, LF or NUL). `high` is set when a passed block
// holds a byte >= 0x80, and left alone otherwise.
size_t no_control_blocks_sse2(const char* p, size_t n, bool& high);
size_t no_control_blocks_avx2(const char* p, size_t n, bool& high);

// Blocks made only of bytes 32..126 other than '=' (quoted-printable literals).
size_t qp_literal_blocks_sse2(const char* p, size_t n);
size_t qp_literal_blocks_avx2(const char* p, size_t n);

// Whether the AVX2 versions may run here.
bool have_avx2();

}  // namespace mailcar::text::kernels
