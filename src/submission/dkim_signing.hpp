// DKIM signing in the submission path (SPEC §10.2): after normalization and admission, before
// the message is relayed or spooled, on both doors. The RSA operation (about 2 ms of CPU for a
// 2048-bit key with mbedTLS) runs on libuv's thread pool, so the loop keeps serving.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string_view>
#include <vector>

#include <uv.h>

#include "mailcar/config.hpp"
#include "mailcar/submission.hpp"

namespace mailcar {

// The configured signing domain for a header From domain: the same domain, or a parent when
// that entry allows subdomains (the closest parent wins). Null when none applies or no key.
const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim,
                                  std::string_view from_domain);

// The signing domain for a submission: by the domain of its first header From address.
const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim, const Submission& s);

// Signs `submission` with `domain` (any thread); on the loop thread afterwards, `next` gets it
// with mailcar's DKIM-Signature on top (a client's own signature stays below it). A signing
// error (mbedTLS failing) is logged and the message goes on unsigned. Without a loop (tests)
// everything happens before this returns. `config` keeps the key alive meanwhile.
void dkim_sign_then(uv_loop_t* loop, std::shared_ptr<const Config> config, const DkimConfig& domain,
                    Submission submission, uint64_t now_ms, std::function<void(Submission)> next);

}  // namespace mailcar
