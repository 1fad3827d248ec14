// `mailcar --check --probe` (issue 9, SPEC §2 and §9.3): connects to every relayed service
// once, through the same relay code as deliveries, and prints per service one line for each
// step that worked and the first that did not.
#pragma once

#include <cstdio>

#include "mailcar/config.hpp"

namespace mailcar {

// Runs its own loop until every probe has finished (each is bounded by the service's
// timeouts). Writes to `out`; returns 0 when every relayed service passed, else 1.
int check_probe(const Config& config, std::FILE* out);

}  // namespace mailcar
