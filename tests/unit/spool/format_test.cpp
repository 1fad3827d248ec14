#include <gtest/gtest.h>

#include <string>

#include "mailcar/spool.hpp"
#include "spool/spool_test_support.hpp"

namespace mailcar {
namespace {

using testing::sample_record;

TEST(SpoolFormat, Crc32cKnownVector) {
  // RFC 3720 B.4 check value for CRC32C.
  EXPECT_EQ(crc32c_update(0, "123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c_update(crc32c_update(0, "1234"), "56789"), 0xE3069283u);
  EXPECT_EQ(crc32c_update(0, ""), 0u);
}

TEST(SpoolFormat, MessageRoundTripKeepsEveryField) {
  SpoolRecord r = sample_record("m1");
  std::string data = std::string("Subject: x\r\n\r\nbinary ") + '\0' + "\x01\xff and %41 -\r\n";
  data.push_back('\0');
  std::string file = encode_msg_file(r, data);
  auto decoded = decode_msg_file(file);
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  r.data_size = data.size();
  EXPECT_EQ(decoded->record, r);
  EXPECT_EQ(decoded->data, data);
}

TEST(SpoolFormat, EmptyAndDashValuesSurvive) {
  SpoolRecord r = sample_record("m2");
  r.envelope_from = "";
  r.remote = "-";
  r.envid = "%2D";
  r.recipients[0].orcpt = "";
  auto decoded = decode_msg_file(encode_msg_file(r, ""));
  ASSERT_TRUE(decoded.ok()) << decoded.error().message;
  EXPECT_EQ(decoded->record.envelope_from, "");
  EXPECT_EQ(decoded->record.remote, "-");
  EXPECT_EQ(decoded->record.envid, "%2D");
  EXPECT_EQ(decoded->record.recipients[0].orcpt, "");
  EXPECT_EQ(decoded->data, "");
}

TEST(SpoolFormat, EveryTruncationIsDetected) {
  std::string file = encode_msg_file(sample_record("torn"), "Subject: t\r\n\r\nbody\r\n");
  for (size_t n = 0; n < file.size(); ++n) {
    EXPECT_FALSE(decode_msg_file(file.substr(0, n)).ok()) << "prefix of " << n << " bytes";
  }
  EXPECT_FALSE(decode_msg_file(file + "x").ok());
  EXPECT_TRUE(decode_msg_file(file).ok());
}

TEST(SpoolFormat, EveryFlippedBitIsDetected) {
  std::string file = encode_msg_file(sample_record("flip"), "Subject: f\r\n\r\nbody\r\n");
  for (size_t i = 0; i < file.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      std::string bad = file;
      bad[i] = static_cast<char>(bad[i] ^ (1 << bit));
      EXPECT_FALSE(decode_msg_file(bad).ok()) << "byte " << i << " bit " << bit;
    }
  }
}

TEST(SpoolFormat, HeaderIsStrict) {
  SpoolRecord r = sample_record("strict");
  std::string header = encode_msg_header(r);
  MsgSeal seal;
  EXPECT_TRUE(parse_msg_header(header, seal).ok());
  EXPECT_FALSE(parse_msg_header(header + "colour blue\n", seal).ok());             // unknown key
  EXPECT_FALSE(parse_msg_header(header + "role again\n", seal).ok());              // twice
  EXPECT_FALSE(parse_msg_header(header.substr(0, header.size() - 1), seal).ok());  // no \n
  std::string no_rcpt = header.substr(0, header.find("rcpt "));
  EXPECT_FALSE(parse_msg_header(no_rcpt, seal).ok());
  std::string no_role = header;
  no_role.erase(no_role.find("role "),
                no_role.find('\n', no_role.find("role ")) + 1 - no_role.find("role "));
  EXPECT_FALSE(parse_msg_header(no_role, seal).ok());
  std::string bad_id = header;
  bad_id.replace(0, bad_id.find('\n'), "id ../etc");
  EXPECT_FALSE(parse_msg_header(bad_id, seal).ok());
}

TEST(SpoolFormat, StateRoundTripTornAndCorrupt) {
  SpoolState s;
  s.state = MessageState::Deferred;
  s.attempts = 3;
  s.next_attempt_ms = 1'700'000'123'456;
  s.last_reply = "451 4.7.1 try later\nsecond line";
  s.failed_at_ms = 0;
  s.recipients = {{RecipientState::Sent, 250, "2.0.0 ok"},
                  {RecipientState::Pending, 451, "4.7.1 try later"},
                  {RecipientState::Failed, 550, "5.1.1 no such user"}};
  std::string file = encode_state_file(s);
  auto back = decode_state_file(file, 3);
  ASSERT_TRUE(back.ok()) << back.error().message;
  EXPECT_EQ(*back, s);
  EXPECT_FALSE(decode_state_file(file, 2).ok());  // recipient count must match the .msg
  for (size_t n = 0; n < file.size(); ++n) {
    EXPECT_FALSE(decode_state_file(file.substr(0, n), 3).ok()) << n;
  }
  for (size_t i = 0; i < file.size(); ++i) {
    std::string bad = file;
    bad[i] = static_cast<char>(bad[i] ^ 0x10);
    EXPECT_FALSE(decode_state_file(bad, 3).ok()) << i;
  }
}

TEST(SpoolFormat, SafeIds) {
  EXPECT_TRUE(is_safe_spool_id("Ab9.x@host_name-1"));
  EXPECT_FALSE(is_safe_spool_id(""));
  EXPECT_FALSE(is_safe_spool_id(".hidden"));
  EXPECT_FALSE(is_safe_spool_id("a/b"));
  EXPECT_FALSE(is_safe_spool_id("a b"));
  EXPECT_FALSE(is_safe_spool_id(std::string(201, 'a')));
  EXPECT_EQ(make_safe_spool_id("<a/b c>@h"), "_a_b_c_@h");
  EXPECT_EQ(make_safe_spool_id(".x"), "_x");
  EXPECT_EQ(make_safe_spool_id(""), "_");
  EXPECT_EQ(make_safe_spool_id(std::string(300, 'a')).size(), 200u);
  EXPECT_TRUE(is_safe_spool_id(make_safe_spool_id("\xff\r\n../..")));
}

}  // namespace
}  // namespace mailcar
