// Shared state (issue 11): the script's arguments and the parsing of its replies, fed through
// hiredis's own RESP reader (the bytes a Redis server sends).
#include <hiredis/hiredis.h>

#include <gtest/gtest.h>

#include <memory>
#include <string>

#include "mailcar/shared_state.hpp"

namespace mailcar {
namespace {

struct ReplyFree {
  void operator()(redisReply* r) const { freeReplyObject(r); }
};
using ReplyPtr = std::unique_ptr<redisReply, ReplyFree>;

// One reply read from RESP bytes.
ReplyPtr read_reply(const std::string& resp) {
  redisReader* reader = redisReaderCreate();
  bound_reply_arrays(reader);
  EXPECT_EQ(redisReaderFeed(reader, resp.data(), resp.size()), REDIS_OK);
  void* reply = nullptr;
  EXPECT_EQ(redisReaderGetReply(reader, &reply), REDIS_OK);
  redisReaderFree(reader);
  EXPECT_NE(reply, nullptr);
  return ReplyPtr(static_cast<redisReply*>(reply));
}

std::string integers(std::initializer_list<long long> values) {
  std::string out = "*" + std::to_string(values.size()) + "\r\n";
  for (long long v : values) out += ":" + std::to_string(v) + "\r\n";
  return out;
}

const PolicyWindow kRole{false, "webapp", 50, 1000};
const PolicyWindow kQuota{true, "email", 500, 86'400'000};

// hiredis 0.14 would calloc the announced element table (the fuzzer found `*1555555555`, a
// 12 GB allocation); a bounded reader refuses the count before allocating anything.
TEST(SharedScript, HugeAnnouncedArraysAreRefusedBeforeAllocation) {
  auto verdict = [](const std::string& resp) {
    redisReader* reader = redisReaderCreate();
    bound_reply_arrays(reader);
    EXPECT_EQ(redisReaderFeed(reader, resp.data(), resp.size()), REDIS_OK);
    void* reply = nullptr;
    int rc = redisReaderGetReply(reader, &reply);
    if (reply != nullptr) freeReplyObject(reply);
    redisReaderFree(reader);
    return rc;
  };
  EXPECT_EQ(verdict("*1555555555\r\n"), REDIS_ERR);
  EXPECT_EQ(verdict("*" + std::to_string(kMaxRedisReplyElements + 1) + "\r\n"), REDIS_ERR);
  EXPECT_EQ(verdict("*2\r\n*1555555555\r\n"), REDIS_ERR);  // nested too
  EXPECT_EQ(verdict(integers({1, 2, 3})), REDIS_OK);
  EXPECT_EQ(read_reply(integers({1, 2, 3}))->elements, 3u);
}

TEST(SharedScript, KeysShareOneHashTagAndNameTheWindow) {
  EXPECT_EQ(shared_script::window_key("mailcar:", kRole), "mailcar:{limits}:role:webapp:50:1000");
  EXPECT_EQ(shared_script::window_key("prod:", kQuota), "prod:{limits}:service:email:500:86400000");
}

TEST(SharedScript, ArgumentsAreKeysThenCostClampAndWindows) {
  auto args = shared_script::arguments("mailcar:", {kRole, kQuota}, 3, false);
  std::vector<std::string> expected{"2",
                                    "mailcar:{limits}:role:webapp:50:1000",
                                    "mailcar:{limits}:service:email:500:86400000",
                                    "3",
                                    "0",
                                    "50",
                                    "1000",
                                    "500",
                                    "86400000"};
  EXPECT_EQ(args, expected);
  auto paced = shared_script::arguments("mailcar:", {kQuota}, 700, true);
  EXPECT_EQ(paced[3], "1");
  EXPECT_EQ(paced[2], "700");
}

TEST(SharedScript, ParsesAnAllowedAnswer) {
  auto reply = read_reply(integers({1, 1796153541500, 1, 0, 0, 47, 60, 1, 0, 0, 499, 172800}));
  auto answer = shared_script::parse_reply(*reply, 2);
  ASSERT_TRUE(answer.ok()) << answer.error().message;
  EXPECT_TRUE(answer->allowed);
  EXPECT_EQ(answer->now_ms, 1796153541500u);
  ASSERT_EQ(answer->judgements.size(), 2u);
  EXPECT_TRUE(answer->judgements[0].allowed);
  EXPECT_EQ(answer->judgements[0].remaining, 47u);
  EXPECT_EQ(answer->judgements[0].reset_ms, 60u);
  EXPECT_EQ(answer->judgements[1].remaining, 499u);
  EXPECT_EQ(answer->judgements[1].reset_ms, 172800u);
}

TEST(SharedScript, ParsesARefusalWithItsWait) {
  auto reply = read_reply(integers({0, 5, 1, 0, 0, 2, 40, 0, 0, 1500, 0, 86400000}));
  auto answer = shared_script::parse_reply(*reply, 2);
  ASSERT_TRUE(answer.ok()) << answer.error().message;
  EXPECT_FALSE(answer->allowed);
  EXPECT_FALSE(answer->judgements[1].allowed);
  EXPECT_FALSE(answer->judgements[1].never);
  EXPECT_EQ(answer->judgements[1].retry_after_ms, 1500u);
}

TEST(SharedScript, ParsesNever) {
  auto reply = read_reply(integers({0, 5, 0, 1, 0, 50, 0}));
  auto answer = shared_script::parse_reply(*reply, 1);
  ASSERT_TRUE(answer.ok()) << answer.error().message;
  EXPECT_TRUE(answer->judgements[0].never);
}

TEST(SharedScript, RefusesMalformedReplies) {
  // Wrong element count, negative numbers, a string, flags out of range, a verdict that
  // disagrees with its windows, an error reply, a nil.
  const std::string cases[] = {
      integers({1, 5, 1, 0, 0, 1}),
      integers({1, 5, 1, 0, 0, -1, 0}),
      "*7\r\n:1\r\n:5\r\n$1\r\n1\r\n:0\r\n:0\r\n:1\r\n:0\r\n",
      integers({1, 5, 2, 0, 0, 1, 0}),
      integers({1, 5, 1, 1, 0, 1, 0}),
      integers({1, 5, 0, 0, 9, 1, 0}),
      integers({2, 5, 1, 0, 0, 1, 0}),
      "-ERR something\r\n",
      "$-1\r\n",
      "+OK\r\n",
  };
  for (const std::string& resp : cases) {
    auto reply = read_reply(resp);
    EXPECT_FALSE(shared_script::parse_reply(*reply, 1).ok()) << resp;
  }
}

TEST(SharedScript, RecognisesNoscript) {
  EXPECT_TRUE(shared_script::is_noscript(
      *read_reply("-NOSCRIPT No matching script. Please use EVAL.\r\n")));
  EXPECT_FALSE(shared_script::is_noscript(*read_reply("-ERR other\r\n")));
  EXPECT_FALSE(shared_script::is_noscript(*read_reply("+NOSCRIPT\r\n")));
}

TEST(SharedScript, SourceUsesTheServerClockAndWritesOnlyWhenAllPass) {
  std::string_view src = shared_script::source();
  EXPECT_NE(src.find("redis.call('TIME')"), std::string_view::npos);
  EXPECT_NE(src.find("if out[1] == 1 then"), std::string_view::npos);
  EXPECT_EQ(src.find("ARGV[0]"), std::string_view::npos);
}

}  // namespace
}  // namespace mailcar

namespace mailcar {
namespace {

TEST(SharedIdempotency, KeyHashesTheScopeIntoItsOwnSlot) {
  std::string k = shared_idempotency::key("mailcar:", "http|app|email|abc");
  EXPECT_EQ(k.rfind("mailcar:idem:{", 0), 0u);
  EXPECT_EQ(k.size(), std::string("mailcar:idem:{}").size() + 64);
  EXPECT_NE(k, shared_idempotency::key("mailcar:", "http|app|email|abd"));
}

TEST(SharedIdempotency, Arguments) {
  auto claim = shared_idempotency::claim_arguments("p:", "s", "hh", "tok", 0);
  ASSERT_EQ(claim.size(), 5u);
  EXPECT_EQ(claim[0], "1");
  EXPECT_EQ(claim[2], "hh");
  EXPECT_EQ(claim[3], "tok");
  EXPECT_EQ(claim[4], "1");  // never a zero TTL
  auto keep = shared_idempotency::complete_arguments(
      "p:", "s", "tok", shared_idempotency::Kept{202, "{}"}, 86'400'000);
  std::vector<std::string> expected{"1", claim[1], "tok", "keep", "202", "{}", "86400000"};
  EXPECT_EQ(keep, expected);
  auto release = shared_idempotency::complete_arguments("p:", "s", "tok", std::nullopt, 5);
  EXPECT_EQ(release.back(), "release");
}

TEST(SharedIdempotency, ParsesClaimReplies) {
  using shared_idempotency::Claim;
  EXPECT_EQ(shared_idempotency::parse_claim_reply(*read_reply("*1\r\n$5\r\nfresh\r\n"))->verdict,
            Claim::Fresh);
  EXPECT_EQ(shared_idempotency::parse_claim_reply(*read_reply("*1\r\n$8\r\ninflight\r\n"))->verdict,
            Claim::InFlight);
  auto replay = shared_idempotency::parse_claim_reply(
      *read_reply("*3\r\n$6\r\nreplay\r\n$3\r\n200\r\n$2\r\n{}\r\n"));
  ASSERT_TRUE(replay.ok());
  EXPECT_EQ(replay->verdict, Claim::Replay);
  EXPECT_EQ(replay->status, 200);
  EXPECT_EQ(replay->body, "{}");
  for (const char* bad :
       {"*3\r\n$6\r\nreplay\r\n$3\r\n20x\r\n$2\r\n{}\r\n",
        "*3\r\n$6\r\nreplay\r\n$3\r\n999\r\n$2\r\n{}\r\n", "*2\r\n$5\r\nfresh\r\n$1\r\nx\r\n",
        "*1\r\n$3\r\nodd\r\n", "*0\r\n", ":1\r\n", "-ERR x\r\n"}) {
    EXPECT_FALSE(shared_idempotency::parse_claim_reply(*read_reply(bad)).ok()) << bad;
  }
  EXPECT_TRUE(*shared_idempotency::parse_complete_reply(*read_reply(":1\r\n")));
  EXPECT_FALSE(*shared_idempotency::parse_complete_reply(*read_reply(":0\r\n")));
  EXPECT_FALSE(shared_idempotency::parse_complete_reply(*read_reply(":2\r\n")).ok());
}

}  // namespace
}  // namespace mailcar
