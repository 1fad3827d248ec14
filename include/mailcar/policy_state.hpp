// Persistence of rate-limit state, so a restart does not reset a daily quota (issue 4).
// Pure: the caller does the file I/O, off the loop thread.
//
// Format (text, one limit per line, fields separated by TAB, names %-escaped):
//   mailcar-policy-state 1
//   role    <role>     <window text>  <TAT, wall-clock ms>
//   service <service>  <rate text>    <TAT, wall-clock ms>
// Only limits not yet fully replenished at `now_ms` are written.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "mailcar/policy.hpp"

namespace mailcar {

// Always holds at least the header line; a Policy not made by make_policy yields only that.
std::string serialize_state(const Policy& policy, uint64_t now_ms);

// Restores what serialize_state wrote. Lines for limits that no longer exist (role or
// service gone, window text changed), malformed lines and a wrong header are ignored.
// Returns the number of limits restored.
size_t restore_state(Policy& policy, std::string_view state);

}  // namespace mailcar
