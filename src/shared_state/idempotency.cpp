// Shared state (issue 11): idempotency keys in Redis, two scripts and their replies.
#include <hiredis/hiredis.h>

#include <charconv>

#include "mailcar/crypto.hpp"
#include "mailcar/shared_state.hpp"

namespace mailcar::shared_idempotency {
namespace {

// Claims a free key; otherwise says what holds it. A different request hash wins over "in
// flight" (422 before 409): the client sent another request under the same key.
constexpr std::string_view kClaim = R"lua(-- mailcar idempotency claim v1
local v = redis.call('HMGET', KEYS[1], 'state', 'hash', 'status', 'body')
if not v[1] then
  redis.call('HSET', KEYS[1], 'state', 'inflight', 'token', ARGV[2], 'hash', ARGV[1])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
  return {'fresh'}
end
if v[2] ~= ARGV[1] then return {'mismatch'} end
if v[1] == 'inflight' then return {'inflight'} end
return {'replay', v[3], v[4]}
)lua";

// Only the claim's owner completes it: a claim that expired and was taken by another request
// is left alone.
constexpr std::string_view kComplete = R"lua(-- mailcar idempotency complete v1
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
if ARGV[2] == 'keep' then
  redis.call('HSET', KEYS[1], 'state', 'done', 'status', ARGV[3], 'body', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('DEL', KEYS[1])
end
return 1
)lua";

std::string_view text_of(const redisReply& r) {
  return r.str != nullptr ? std::string_view(r.str, r.len) : std::string_view();
}

bool is_text(const redisReply* r) {
  return r != nullptr && (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS);
}

}  // namespace

std::string_view claim_source() {
  return kClaim;
}

std::string_view complete_source() {
  return kComplete;
}

std::string key(std::string_view prefix, std::string_view scope) {
  return std::string(prefix) + "idem:{" + crypto::hex(crypto::sha256(scope)) + "}";
}

std::vector<std::string> claim_arguments(std::string_view prefix, std::string_view scope,
                                         std::string_view request_hash_hex, std::string_view token,
                                         uint64_t inflight_ttl_ms) {
  return {"1", key(prefix, scope), std::string(request_hash_hex), std::string(token),
          std::to_string(std::max<uint64_t>(1, inflight_ttl_ms))};
}

Result<ClaimAnswer> parse_claim_reply(const redisReply& reply) {
  if (reply.type == REDIS_REPLY_ERROR) {
    return Error{"error reply: " + std::string(text_of(reply).substr(0, 200))};
  }
  if (reply.type != REDIS_REPLY_ARRAY || reply.elements == 0 || !is_text(reply.element[0])) {
    return Error{"claim reply is not an array starting with a verdict"};
  }
  std::string_view verdict = text_of(*reply.element[0]);
  ClaimAnswer a;
  if (verdict == "fresh" || verdict == "inflight" || verdict == "mismatch") {
    if (reply.elements != 1) return Error{"claim reply has extra elements"};
    a.verdict = verdict == "fresh"      ? Claim::Fresh
                : verdict == "inflight" ? Claim::InFlight
                                        : Claim::Mismatch;
    return a;
  }
  if (verdict != "replay") return Error{"claim reply has an unknown verdict"};
  if (reply.elements != 3 || !is_text(reply.element[1]) || !is_text(reply.element[2])) {
    return Error{"replay reply needs a status and a body"};
  }
  std::string_view status = text_of(*reply.element[1]);
  unsigned value = 0;
  auto [end, ec] = std::from_chars(status.data(), status.data() + status.size(), value);
  if (ec != std::errc() || end != status.data() + status.size() || value < 100 || value > 599) {
    return Error{"replay reply has a malformed status"};
  }
  a.verdict = Claim::Replay;
  a.status = static_cast<uint16_t>(value);
  a.body = std::string(text_of(*reply.element[2]));
  return a;
}

std::vector<std::string> complete_arguments(std::string_view prefix, std::string_view scope,
                                            std::string_view token, const std::optional<Kept>& keep,
                                            uint64_t ttl_ms) {
  std::vector<std::string> args{"1", key(prefix, scope), std::string(token)};
  if (!keep) {
    args.emplace_back("release");
    return args;
  }
  args.emplace_back("keep");
  args.push_back(std::to_string(keep->status));
  args.push_back(keep->body);
  args.push_back(std::to_string(std::max<uint64_t>(1, ttl_ms)));
  return args;
}

Result<bool> parse_complete_reply(const redisReply& reply) {
  if (reply.type == REDIS_REPLY_INTEGER && (reply.integer == 0 || reply.integer == 1)) {
    return reply.integer == 1;
  }
  if (reply.type == REDIS_REPLY_ERROR) {
    return Error{"error reply: " + std::string(text_of(reply).substr(0, 200))};
  }
  return Error{"complete reply is not 0 or 1"};
}

}  // namespace mailcar::shared_idempotency
