// The one wall clock: milliseconds since the Unix epoch. Rate limits, Date headers, spool
// times and log timestamps all read it here; pure code takes the time as an argument instead.
#pragma once

#include <cstdint>

namespace mailcar {

uint64_t wall_clock_ms();

}  // namespace mailcar
