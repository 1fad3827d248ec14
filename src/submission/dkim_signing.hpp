// DKIM signing in the submission path (SPEC §10.2): after normalization, before the message is
// relayed or spooled, on both doors.
#pragma once

#include <cstdint>
#include <string_view>
#include <vector>

#include "mailcar/config.hpp"
#include "mailcar/submission.hpp"

namespace mailcar {

// The configured signing domain for a header From domain: the same domain, or a parent when
// that entry allows subdomains; the exact match wins. Null when none applies or no key loaded.
const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim,
                                  std::string_view from_domain);

// Puts mailcar's DKIM-Signature on top of `submission.message.data` when the first header From
// address's domain has a signing domain. A client's own signature stays below. A signing error
// (mbedTLS failing) is logged and the message goes on unsigned.
void dkim_sign(const std::vector<DkimConfig>& dkim, Submission& submission, uint64_t now_ms);

}  // namespace mailcar
