// Shared state (issue 11): the GCRA script, its arguments and its reply.
#include <hiredis/hiredis.h>

#include "mailcar/shared_state.hpp"

namespace mailcar::shared_script {
namespace {

// The same arithmetic as RateLimiter (rate_limiter.cpp), in units of 1/N ms: a key holds the
// theoretical arrival time as "MS:REM" (TAT = MS*N + REM units), so nothing drifts whatever N
// is. Lua numbers are doubles: every value stays an integer below 2^53 as long as N*T does
// (T in ms: a day window up to N = 10^8). The key expires when its window is replenished.
// Redis 7 replicates scripts by their effects, so a script may call TIME and then write; on
// Redis 5/6 replicate_commands() asks for the same.
constexpr std::string_view kSource = R"lua(-- mailcar GCRA v1
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local cost = tonumber(ARGV[1])
local clamp = ARGV[2] == '1'
local function div(a, b)
  local q = math.floor(a / b)
  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end
  return q
end
local function cdiv(a, b) return -div(-a, b) end
local out = {1, now}
local plan = {}
for i = 1, #KEYS do
  local n = tonumber(ARGV[1 + 2 * i])
  local p = tonumber(ARGV[2 + 2 * i])
  local c = cost
  if clamp and c > n then c = n end
  local ok, never, retry, remaining, reset = 0, 0, 0, n, 0
  if n == 0 or p == 0 then
    if c == 0 or (p == 0 and n > 0) then ok = 1 else never = 1 end
  else
    local window = p * n
    local d = -window
    local v = redis.call('GET', KEYS[i])
    if v then
      local ms, rem = string.match(v, '^(%d+):(%d+)$')
      if ms then d = (tonumber(ms) - now) * n + tonumber(rem) end
    end
    if d > window then d = window end
    local base = d
    if base < 0 then base = 0 end
    if c > n then
      never = 1
    else
      local new = base + c * p
      if new <= window then
        ok = 1
        remaining = div(window - new, p)
        reset = cdiv(new, n)
        if c > 0 then plan[#plan + 1] = {KEYS[i], new, n} end
      else
        retry = cdiv(d + c * p - window, n)
        if retry < 1 then retry = 1 end
      end
    end
    if ok == 0 then
      remaining = div(window - base, p)
      reset = cdiv(base, n)
    end
  end
  if ok == 0 then out[1] = 0 end
  out[#out + 1] = ok
  out[#out + 1] = never
  out[#out + 1] = retry
  out[#out + 1] = remaining
  out[#out + 1] = reset
end
if out[1] == 1 then
  for _, w in ipairs(plan) do
    local q = div(w[2], w[3])
    local ttl = cdiv(w[2], w[3])
    if ttl < 1 then ttl = 1 end
    redis.call('SET', w[1], string.format('%d:%d', now + q, w[2] - q * w[3]), 'PX', ttl)
  end
end
return out
)lua";

constexpr size_t kPerWindow = 5;

}  // namespace

std::string_view source() {
  return kSource;
}

std::string window_key(std::string_view prefix, const PolicyWindow& window) {
  std::string key(prefix);
  key += window.service ? "{limits}:service:" : "{limits}:role:";
  key += window.owner;
  key += ':';
  key += std::to_string(window.count);
  key += ':';
  key += std::to_string(window.period_ms);
  return key;
}

std::vector<std::string> arguments(std::string_view prefix,
                                   const std::vector<PolicyWindow>& windows, uint64_t cost,
                                   bool clamp) {
  std::vector<std::string> args;
  args.reserve(3 + 3 * windows.size());
  args.push_back(std::to_string(windows.size()));
  for (const PolicyWindow& w : windows) args.push_back(window_key(prefix, w));
  args.push_back(std::to_string(cost));
  args.emplace_back(clamp ? "1" : "0");
  for (const PolicyWindow& w : windows) {
    args.push_back(std::to_string(w.count));
    args.push_back(std::to_string(w.period_ms));
  }
  return args;
}

Result<Answer> parse_reply(const redisReply& reply, size_t windows) {
  if (reply.type == REDIS_REPLY_ERROR) {
    std::string text = reply.str != nullptr ? std::string(reply.str, reply.len) : std::string();
    if (text.size() > 200) text.resize(200);
    return Error{"error reply: " + text};
  }
  if (reply.type != REDIS_REPLY_ARRAY) return Error{"reply is not an array"};
  if (reply.elements != 2 + kPerWindow * windows) {
    return Error{"reply has " + std::to_string(reply.elements) + " elements, expected " +
                 std::to_string(2 + kPerWindow * windows)};
  }
  std::vector<uint64_t> values;
  values.reserve(reply.elements);
  for (size_t i = 0; i < reply.elements; ++i) {
    const redisReply* e = reply.element[i];
    if (e == nullptr || e->type != REDIS_REPLY_INTEGER || e->integer < 0) {
      return Error{"reply element " + std::to_string(i) + " is not a non-negative integer"};
    }
    values.push_back(static_cast<uint64_t>(e->integer));
  }
  if (values.size() < 2 || values[0] > 1) return Error{"reply verdict is not 0 or 1"};
  Answer answer;
  answer.allowed = values[0] == 1;
  answer.now_ms = values[1];
  bool all = true;
  for (size_t w = 0; w < windows; ++w) {
    const uint64_t* v = &values[2 + kPerWindow * w];
    if (v[0] > 1 || v[1] > 1) return Error{"reply flags are not 0 or 1"};
    RateLimiter::Judgement j;
    j.allowed = v[0] == 1;
    j.never = v[1] == 1;
    j.retry_after_ms = v[2];
    j.remaining = v[3];
    j.reset_ms = v[4];
    if (j.allowed && j.never) return Error{"reply window both allowed and never"};
    all = all && j.allowed;
    answer.judgements.push_back(j);
  }
  if (all != answer.allowed) return Error{"reply verdict disagrees with its windows"};
  return answer;
}

bool is_noscript(const redisReply& reply) {
  return reply.type == REDIS_REPLY_ERROR && reply.str != nullptr &&
         std::string_view(reply.str, reply.len).starts_with("NOSCRIPT");
}

}  // namespace mailcar::shared_script
