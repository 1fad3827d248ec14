// libFuzzer: what mailcar itself parses of Redis (issue 11). The first byte picks the part:
// even: RESP bytes read by hiredis, then the GCRA script's reply parsed for (byte/2 % 8)
// windows, and the idempotency scripts' replies; odd: the rest as a shared_state.redis URL.
// Nothing may crash, and what they accept must hold together.
#include <hiredis/hiredis.h>

#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string_view>

#include "config/config_internal.hpp"
#include "mailcar/shared_state.hpp"

namespace {

void reply_part(size_t windows, std::string_view in) {
  redisReader* reader = redisReaderCreate();
  if (reader == nullptr) return;
  mailcar::bound_reply_arrays(reader);  // as every connection of mailcar's has it
  if (redisReaderFeed(reader, in.data(), in.size()) == REDIS_OK) {
    void* reply = nullptr;
    while (redisReaderGetReply(reader, &reply) == REDIS_OK && reply != nullptr) {
      const auto& r = *static_cast<redisReply*>(reply);
      (void)mailcar::shared_script::is_noscript(r);
      if (auto claim = mailcar::shared_idempotency::parse_claim_reply(r); claim.ok()) {
        bool replay = claim->verdict == mailcar::shared_idempotency::Claim::Replay;
        if (replay != (claim->status != 0)) std::abort();
      }
      (void)mailcar::shared_idempotency::parse_complete_reply(r);
      auto answer = mailcar::shared_script::parse_reply(r, windows);
      if (answer.ok()) {
        if (answer->judgements.size() != windows) std::abort();
        bool all = true;
        for (const auto& j : answer->judgements) {
          if (j.allowed && j.never) std::abort();
          all = all && j.allowed;
        }
        if (all != answer->allowed) std::abort();
      }
      freeReplyObject(reply);
      reply = nullptr;
    }
  }
  redisReaderFree(reader);
}

void url_part(std::string_view in) {
  mailcar::SharedStateConfig c;
  if (mailcar::config_detail::parse_redis_url(in, c)) return;
  // Accepted: either a socket path or a host and a port, and the shown URL hides the password.
  if (c.unix_path.empty() == c.host.empty()) std::abort();
  if (c.unix_path.empty() && c.port == 0) std::abort();
  if (!c.password.empty() && c.unix_path.empty() && c.redis.find(":***@") == std::string::npos) {
    std::abort();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::string_view in(reinterpret_cast<const char*>(data) + 1, size - 1);
  if (data[0] % 2 == 0) {
    reply_part((data[0] / 2) % 8, in);
  } else {
    url_part(in);
  }
  return 0;
}
