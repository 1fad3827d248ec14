// Which block loops scan.cpp runs: SSE2 (every x86-64) or AVX2 (taken at run time when the
// CPU has it). Tests run every scanner under each.
#pragma once

namespace mailcar::text::kernels {

// Whether the AVX2 loops run: the CPU has AVX2 and allow_avx2(false) is not in force.
bool have_avx2();

// For tests: false makes the SSE2 loops run even where AVX2 exists; true undoes it.
void allow_avx2(bool allowed);

}  // namespace mailcar::text::kernels
