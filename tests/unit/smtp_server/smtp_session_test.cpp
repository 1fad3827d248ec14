#include "smtp_server/smtp_session.hpp"

#include <gtest/gtest.h>

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "mailcar/scan.hpp"
#include "mailcar/text.hpp"

namespace mailcar::smtp {
namespace {

class FakeCredentials : public CredentialStore {
 public:
  std::optional<std::string> authenticate(std::string_view user,
                                          std::string_view password) const override {
    auto it = users.find(std::string(user));
    if (it == users.end() || it->second.first != password) return std::nullopt;
    return it->second.second;
  }
  std::map<std::string, std::pair<std::string, std::string>> users = {
      {"legacy-app", {"s3cret", "legacy"}}};
};

class FakePolicy : public Policy {
 public:
  PolicyDecision admit(const PolicyRequest&, uint64_t) override {
    ADD_FAILURE() << "the session must never consume policy";
    return {};
  }
  PolicyDecision check(const PolicyRequest& request, uint64_t now_ms) const override {
    checks.push_back(request);
    last_now = now_ms;
    return judge ? judge(request) : PolicyDecision{};
  }
  QuotaVerdict take_quota(std::string_view, uint64_t, uint64_t) override {
    ADD_FAILURE() << "the session must never consume a quota";
    return {};
  }
  std::function<PolicyDecision(const PolicyRequest&)> judge;
  mutable std::vector<PolicyRequest> checks;
  mutable uint64_t last_now = 0;
};

const std::string kCapsTail =
    "250-PIPELINING\r\n250-SIZE 1000\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n250-CHUNKING\r\n";

class SessionTest : public ::testing::Test {
 protected:
  SessionTest() {
    options.hostname = "mx.test";
    options.max_message_bytes = 1000;
    options.anonymous_role = "anon";
    options.service = "email";
    options.now_ms = [] { return uint64_t{12345}; };
  }

  // Greets and marks the greeting written.
  void open(bool with_credentials = true) {
    session = std::make_unique<SmtpServerSession>(
        options, with_credentials ? &credentials : nullptr, &policy);
    auto out = session->start();
    ASSERT_EQ(out.reply, "220 mx.test ESMTP mailcar\r\n");
    session->greeting_sent();
  }

  std::string say(std::string_view bytes) {
    last = session->feed(bytes);
    return last.reply;
  }

  // EHLO plus MAIL and one RCPT, then DATA.
  void begin_data() {
    say("EHLO client\r\n");
    ASSERT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"),
              "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
    ASSERT_EQ(session->state(), SessionState::Data);
  }

  FakeCredentials credentials;
  FakePolicy policy;
  SessionOptions options;
  std::unique_ptr<SmtpServerSession> session;
  SessionOutput last;
};

std::string plain(std::string_view authzid, std::string_view user, std::string_view pass) {
  std::string raw(authzid);
  raw.push_back('\0');
  raw += user;
  raw.push_back('\0');
  raw += pass;
  return text::base64_encode(raw);
}

TEST_F(SessionTest, FullDialogueDeliversAndQuits) {
  open();
  EXPECT_EQ(say("EHLO client.example\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250 ENHANCEDSTATUSCODES\r\n");
  EXPECT_EQ(session->helo(), "client.example");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> SIZE=500 BODY=8BITMIME\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:<c@example.org>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  EXPECT_EQ(say("Subject: hi\r\n\r\nbody\r\n.\r\n"), "");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  ASSERT_TRUE(last.submission.has_value());
  EXPECT_EQ(last.submission->envelope_from, "a@example.com");
  EXPECT_EQ(last.submission->recipients,
            (std::vector<std::string>{"b@example.org", "c@example.org"}));
  EXPECT_EQ(last.submission->data, "Subject: hi\r\n\r\nbody\r\n");
  EXPECT_TRUE(last.submission->eight_bit);  // BODY=8BITMIME
  EXPECT_FALSE(last.submission->smtputf8);
  EXPECT_EQ(session->state(), SessionState::AwaitingDelivery);
  EXPECT_TRUE(session->busy());

  auto done = session->delivery_finished(250, "2.0.0", "Ok: queued as abc@mx.test");
  EXPECT_EQ(done.reply, "250 2.0.0 Ok: queued as abc@mx.test\r\n");
  EXPECT_EQ(session->state(), SessionState::Command);
  EXPECT_EQ(say("QUIT\r\n"), "221 2.0.0 Bye\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
  EXPECT_EQ(say("NOOP\r\n"), "");  // closed: nothing more is read

  ASSERT_EQ(policy.checks.size(), 3u);  // MAIL, RCPT, RCPT
  EXPECT_EQ(policy.checks[0].role, "anon");
  EXPECT_EQ(policy.checks[0].service, "email");
  EXPECT_EQ(policy.checks[0].envelope_from, "a@example.com");
  EXPECT_EQ(policy.checks[2].recipients, 2u);
  EXPECT_EQ(policy.last_now, 12345u);
}

TEST_F(SessionTest, EhloAdvertisesAuthAndStartTlsOnlyWhereTheyApply) {
  options.tls_available = true;
  options.auth_in_clear = false;
  open();
  EXPECT_EQ(say("EHLO c\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250-ENHANCEDSTATUSCODES\r\n250 STARTTLS\r\n");
  options.tls_available = false;
  options.auth_in_clear = true;
  open();
  EXPECT_EQ(say("EHLO c\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n");
}

TEST_F(SessionTest, HeloHasNoExtensions) {
  open();
  EXPECT_EQ(say("HELO client\r\n"), "250 mx.test\r\n");
  EXPECT_FALSE(session->esmtp());
  EXPECT_EQ(say("HELO\r\n"), "501 5.5.4 Syntax: HELO hostname\r\n");
}

TEST_F(SessionTest, PipelinedBatchRepliesInOrder) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nRCPT TO:<bad>\r\n"
                "RCPT TO:<c@example.org>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n501 5.1.3 Bad recipient address syntax\r\n"
            "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
}

TEST_F(SessionTest, CommandsAfterDataWaitForTheDeliveryReply) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"
                "x\r\n.\r\nRSET\r\nMAIL FROM:<z@example.com>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, "x\r\n");
  EXPECT_EQ(say("NOOP\r\n"), "");  // still waiting: buffered
  auto done = session->delivery_finished(451, "4.4.1", "Upstream: Connection refused\r\nx");
  EXPECT_EQ(done.reply,
            "451 4.4.1 Upstream: Connection refused  x\r\n250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n"
            "250 2.0.0 Ok\r\n");
  EXPECT_EQ(done.event, SessionEvent::None);
}

// The end-of-data marker found wherever a read boundary falls.
TEST_F(SessionTest, EndOfDataSplitAtEveryByteBoundary) {
  const std::string payload = "Subject: a\r\n\r\n..dot\r\nhello\r\n.\r\n";
  const std::string expected = "Subject: a\r\n\r\n.dot\r\nhello\r\n";
  for (size_t cut = 0; cut <= payload.size(); ++cut) {
    open();
    begin_data();
    say(payload.substr(0, cut));
    if (cut < payload.size()) {
      EXPECT_EQ(last.event, SessionEvent::None) << cut;
      say(payload.substr(cut));
    }
    ASSERT_EQ(last.event, SessionEvent::Deliver) << cut;
    EXPECT_EQ(last.submission->data, expected) << cut;
  }
  open();
  begin_data();
  for (size_t i = 0; i < payload.size(); ++i) {
    say(payload.substr(i, 1));
    if (i + 1 < payload.size()) {
      ASSERT_EQ(last.event, SessionEvent::None) << i;
    }
  }
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, expected);
}

// Reference reader for message data, a line at a time: a line ends at CRLF, bare CR or bare
// LF and becomes CRLF; a leading dot is dropped; "." ends the data only when it and the line
// before it end in CRLF. Returns the data and how many input bytes the end marker closed.
std::pair<std::string, size_t> reference_data(std::string_view in) {
  std::string out;
  bool previous_crlf = true;
  size_t pos = 0;
  while (pos < in.size()) {
    size_t eol = in.find_first_of("\r\n", pos);
    if (eol == std::string_view::npos) break;
    bool crlf = in[eol] == '\r' && eol + 1 < in.size() && in[eol + 1] == '\n';
    std::string_view line = in.substr(pos, eol - pos);
    pos = eol + (crlf ? 2 : 1);
    if (line == "." && crlf && previous_crlf) return {out, pos};
    if (line.starts_with('.')) line.remove_prefix(1);
    out.append(line);
    out += "\r\n";
    previous_crlf = crlf;
  }
  return {out, std::string_view::npos};
}

// The bulk DATA reader against the reference on random data, cut into two reads at every byte.
TEST_F(SessionTest, DataReaderMatchesReferenceAtEverySplit) {
  std::mt19937 rng(7);
  const char* lines[] = {"a", ".", "..", ".x", "", "(long)", "caf\xc3\xa9"};  // 5: long_line
  const std::string long_line(40, 'y');
  const char* ends[] = {"\r\n", "\r\n", "\r\n", "\n", "\r"};
  for (int round = 0; round < 60; ++round) {
    std::string payload;
    std::uniform_int_distribution<int> line_pick(0, 6), end_pick(0, 4);
    for (int n = round % 12; n > 0; --n) {
      int k = line_pick(rng);
      payload += k == 5 ? long_line : std::string(lines[k]);
      payload += ends[end_pick(rng)];
    }
    payload += "\r\n.\r\n";
    auto [want, used] = reference_data(payload);
    if (used != payload.size()) continue;  // the random data held an end marker itself
    for (size_t cut = 0; cut <= payload.size(); ++cut) {
      open();
      begin_data();
      say(payload.substr(0, cut));
      if (cut < payload.size()) say(payload.substr(cut));
      ASSERT_EQ(last.event, SessionEvent::Deliver) << round << " " << cut;
      ASSERT_EQ(last.submission->data, want) << round << " " << cut;
      EXPECT_EQ(last.submission->eight_bit, want.find('\xc3') != std::string::npos);
    }
  }
}

// What the reader says it saw (so normalization need not read the message again) is what a
// full scan of the data finds: NUL, 8-bit bytes, a line over 998 octets, CRLF line ends only.
TEST_F(SessionTest, DataReaderTellsWhatItSawAtEverySplit) {
  std::mt19937 rng(11);
  options.max_message_bytes = 20000;
  const std::string lines[] = {"a",
                               ".b",
                               std::string(998, 'x'),
                               std::string(999, 'y'),
                               std::string("n\0l", 3),
                               "caf\xc3\xa9",
                               std::string(2000, 'z')};
  const char* ends[] = {"\r\n", "\r\n", "\n", "\r"};
  for (int round = 0; round < 40; ++round) {
    std::string payload;
    std::uniform_int_distribution<int> line_pick(0, 6), end_pick(0, 3);
    for (int n = round % 6; n > 0; --n) {
      payload += lines[line_pick(rng)];
      payload += ends[end_pick(rng)];
    }
    payload += "\r\n.\r\n";
    auto [want, used] = reference_data(payload);
    if (used != payload.size()) continue;
    const text::TextSummary sum = text::summarize_text(want);
    for (size_t cut = 0; cut <= payload.size(); cut += 1 + cut % 13) {
      open();
      begin_data();
      say(payload.substr(0, cut));
      if (cut < payload.size()) say(payload.substr(cut));
      ASSERT_EQ(last.event, SessionEvent::Deliver) << round << " " << cut;
      ASSERT_EQ(last.submission->data, want);
      ASSERT_TRUE(last.submission->known_text.has_value());
      const KnownText& seen = *last.submission->known_text;
      EXPECT_FALSE(sum.bare_line_end);
      EXPECT_EQ(seen.nul, sum.nul) << round << " " << cut;
      EXPECT_EQ(seen.high, sum.high_bytes > 0) << round << " " << cut;
      EXPECT_EQ(seen.long_line, sum.longest_line > kMaxLineOctets) << round << " " << cut;
    }
  }
}

TEST_F(SessionTest, DotUnstuffing) {
  open();
  begin_data();
  say("..leading\r\n...\r\n.x\r\nmid.dle\r\n..\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, ".leading\r\n..\r\nx\r\nmid.dle\r\n.\r\n");
}

TEST_F(SessionTest, EmptyMessage) {
  open();
  begin_data();
  say(".\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, "");
}

// SMTP smuggling: only <CRLF>.<CRLF> ends the data; other dot lines stay content.
TEST_F(SessionTest, BareLfOrCrDotDoesNotEndData) {
  for (std::string marker : {"\n.\n", "\n.\r\n", "\r\n.\n", "\r.\r", "\r.\r\n", "\r\n.\r"}) {
    open();
    begin_data();
    say("a" + marker + "MAIL FROM:<evil@example.com>\r\nRCPT TO:<v@example.org>\r\nDATA\r\n");
    EXPECT_EQ(last.reply, "") << text::base64_encode(marker);
    EXPECT_EQ(last.event, SessionEvent::None) << text::base64_encode(marker);
    say("end\r\n.\r\n");
    ASSERT_EQ(last.event, SessionEvent::Deliver);
    EXPECT_NE(last.submission->data.find("MAIL FROM:<evil@example.com>\r\n"), std::string::npos);
    EXPECT_EQ(policy.checks.size(), 2u);  // only the real MAIL and RCPT were judged
    policy.checks.clear();
  }
}

TEST_F(SessionTest, BareLfAndCrBecomeCrlf) {
  open();
  begin_data();
  say("a\nb\rc\r\n\rd\n.\n\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  // "\n.\n": the bare-LF dot line is unstuffed like any other and does not end the data.
  EXPECT_EQ(last.submission->data, "a\r\nb\r\nc\r\n\r\nd\r\n\r\n\r\n");
  for (size_t i = 0; i < last.submission->data.size(); ++i) {
    if (last.submission->data[i] == '\n') {
      EXPECT_EQ(last.submission->data[i - 1], '\r');
    }
    if (last.submission->data[i] == '\r') {
      EXPECT_EQ(last.submission->data[i + 1], '\n');
    }
  }
}

TEST_F(SessionTest, EightBitDataIsFlagged) {
  open();
  begin_data();
  say("caf\xc3\xa9\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_TRUE(last.submission->eight_bit);
}

TEST_F(SessionTest, SizeLimitWhileStreamingThenSessionUsable) {
  open();
  begin_data();
  std::string line(99, 'x');
  line += "\r\n";
  for (int i = 0; i < 20; ++i) EXPECT_EQ(say(line), "");
  EXPECT_EQ(session->state(), SessionState::DataDraining);
  EXPECT_EQ(
      say(".\r\n"),
      "552 5.3.4 Message size exceeds fixed maximum message size: the limit is 1000 bytes\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_EQ(session->state(), SessionState::Command);
  // The transaction is gone; a new one works.
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\n"), "503 5.5.1 Need MAIL command\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nsmall\r\n.\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, "small\r\n");
}

TEST_F(SessionTest, ExactlyMaxSizeIsAccepted) {
  open();
  begin_data();
  std::string body(998, 'y');
  say(body + "\r\n.\r\n");  // 1000 bytes with its CRLF
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data.size(), 1000u);
}

TEST_F(SessionTest, DataBufferIsGrantedBeforeItIsAllocated) {
  options.max_message_bytes = 1'000'000;
  std::vector<uint64_t> asked;
  uint64_t room = 300'000;
  options.reserve_data = [&](uint64_t total) {
    asked.push_back(total);
    return total <= room;
  };
  open();
  say("EHLO c\r\n");
  // SIZE= sizes the first buffer (plus room for the header fields normalization adds).
  say("MAIL FROM:<a@example.com> SIZE=200000\r\nRCPT TO:<b@example.org>\r\n");
  EXPECT_EQ(say("DATA\r\n"), "354 End data with <CR><LF>.<CR><LF>\r\n");
  ASSERT_EQ(asked.size(), 1u);
  EXPECT_GE(asked[0], 200'000u);
  EXPECT_LE(asked[0], 210'000u);
  std::string line(98, 'x');
  line += "\r\n";
  std::string chunk;
  for (int i = 0; i < 1000; ++i) chunk += line;  // 100 KB per feed
  for (int i = 0; i < 5; ++i) EXPECT_EQ(say(chunk), "");
  // Growth past the budget: the rest is drained, then 451 4.3.1; the session goes on.
  EXPECT_EQ(session->state(), SessionState::DataDraining);
  EXPECT_EQ(say(".\r\n"), "451 4.3.1 Insufficient system storage, try again later\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  for (uint64_t total : asked) EXPECT_LE(total, 1'000'000u + 8192) << "never more than the limit";
  // A message announced bigger than the room left: refused at DATA, before any data.
  room = 1000;
  say("MAIL FROM:<a@example.com> SIZE=5000\r\nRCPT TO:<b@example.org>\r\n");
  EXPECT_EQ(say("DATA\r\n"), "451 4.3.1 Insufficient system storage, try again later\r\n");
  EXPECT_EQ(session->state(), SessionState::Command);
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\n"), "503 5.5.1 Need MAIL command\r\n");
  // Room again: a message without SIZE= asks for a first step when data comes, and goes through.
  room = 1'000'000;
  size_t asked_before = asked.size();
  std::string text(200, 'm');
  say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n" + text + "\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, text + "\r\n");
  ASSERT_EQ(asked.size(), asked_before + 1);
  EXPECT_GE(asked.back(), text.size());
  // Room for the header fields normalization adds, so that it works in place.
  EXPECT_GE(last.submission->data.capacity(), text.size() + 2 + 4096);
}

TEST_F(SessionTest, SizeParameterOverLimit) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(
      say("MAIL FROM:<a@example.com> SIZE=1001\r\n"),
      "552 5.3.4 Message size exceeds fixed maximum message size: the limit is 1000 bytes\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> SIZE=abc\r\n"), "501 5.5.4 Bad SIZE parameter\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> BODY=BINARYMIME\r\n"),
            "501 5.5.4 Unsupported BODY type\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> FOO=1\r\n"), "555 5.5.4 Unsupported MAIL parameter\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> SIZE=1000\r\n"), "250 2.1.0 Ok\r\n");
}

TEST_F(SessionTest, OverLongDataLineRefusedAfterData) {
  options.max_message_bytes = 1'000'000;
  options.max_data_line = 100;
  open();
  begin_data();
  say(std::string(101, 'z') + "\r\n.\r\n");
  EXPECT_EQ(last.reply, "500 5.5.2 Message line too long (limit 100 bytes)\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_EQ(say("NOOP\r\n"), "250 2.0.0 Ok\r\n");
}

TEST_F(SessionTest, StartTlsInjectionIsNeverExecuted) {
  options.tls_available = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("STARTTLS\r\nMAIL FROM:<x@example.com>\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  EXPECT_EQ(last.event, SessionEvent::StartTls);
  EXPECT_EQ(session->state(), SessionState::StartTlsPending);
  EXPECT_EQ(say("RCPT TO:<y@example.com>\r\n"), "");  // before the handshake: dropped
  session->tls_started();
  EXPECT_TRUE(session->tls_active());
  EXPECT_TRUE(policy.checks.empty());
  // Had the injected MAIL run, this RCPT would be accepted; but the session starts afresh.
  EXPECT_EQ(say("RCPT TO:<y@example.com>\r\n"), "503 5.5.1 Need MAIL command\r\n");
  EXPECT_EQ(say("MAIL FROM:<x@example.com>\r\n"), "503 5.5.1 Send EHLO or HELO first\r\n");
}

TEST_F(SessionTest, StateResetAfterTls) {
  options.tls_available = true;
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cret") + "\r\n"),
            "235 2.7.0 Authentication successful\r\n");
  EXPECT_TRUE(session->authenticated());
  EXPECT_EQ(say("STARTTLS\r\n"), "220 2.0.0 Ready to start TLS\r\n");
  session->tls_started();
  EXPECT_FALSE(session->authenticated());
  EXPECT_EQ(session->helo(), "");
  EXPECT_EQ(say("EHLO c\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n");
  EXPECT_EQ(say("STARTTLS\r\n"), "503 5.5.1 TLS already active\r\n");
}

TEST_F(SessionTest, StartTlsNotConfigured) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("STARTTLS\r\n"), "502 5.5.1 STARTTLS not available\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
}

TEST_F(SessionTest, AuthPlainWithInitialResponse) {
  options.auth_in_clear = true;
  options.anonymous_role.reset();
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cret") + "\r\n"),
            "235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(session->role(), "legacy");
  EXPECT_EQ(session->auth_user(), "legacy-app");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "250 2.1.0 Ok\r\n");
  ASSERT_EQ(policy.checks.size(), 1u);
  EXPECT_EQ(policy.checks[0].role, "legacy");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cret") + "\r\n"),
            "503 5.5.1 Already authenticated\r\n");
}

TEST_F(SessionTest, AuthPlainWithoutInitialResponse) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN\r\n"), "334 \r\n");
  EXPECT_EQ(say(plain("legacy-app", "legacy-app", "s3cret") + "\r\n"),
            "235 2.7.0 Authentication successful\r\n");
}

TEST_F(SessionTest, AuthPlainOtherAuthzidRefused) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("admin", "legacy-app", "s3cret") + "\r\n"),
            "535 5.7.8 Authentication credentials invalid\r\n");
}

TEST_F(SessionTest, AuthLoginWithAndWithoutInitialResponse) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH LOGIN\r\n"), "334 VXNlcm5hbWU6\r\n");
  EXPECT_EQ(say(text::base64_encode("legacy-app") + "\r\n"), "334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(say(text::base64_encode("s3cret") + "\r\n"), "235 2.7.0 Authentication successful\r\n");

  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH LOGIN " + text::base64_encode("legacy-app") + "\r\n"),
            "334 UGFzc3dvcmQ6\r\n");
  EXPECT_EQ(say(text::base64_encode("s3cret") + "\r\n"), "235 2.7.0 Authentication successful\r\n");
  EXPECT_EQ(session->role(), "legacy");
}

TEST_F(SessionTest, AuthCancelAndBadBase64) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH LOGIN\r\n*\r\n"),
            "334 VXNlcm5hbWU6\r\n501 5.0.0 Authentication cancelled\r\n");
  EXPECT_EQ(say("AUTH PLAIN\r\n!!!\r\n"), "334 \r\n501 5.5.2 Cannot decode response\r\n");
  EXPECT_EQ(say("AUTH CRAM-MD5\r\n"), "504 5.5.4 Unrecognized authentication type\r\n");
  EXPECT_FALSE(session->authenticated());
}

TEST_F(SessionTest, BadCredentialsAndAttemptLimit) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "wrong") + "\r\n"),
            "535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_TRUE(last.auth_failed);
  EXPECT_EQ(say("AUTH LOGIN " + text::base64_encode("nobody") + "\r\n" +
                text::base64_encode("s3cret") + "\r\n"),
            "334 UGFzc3dvcmQ6\r\n535 5.7.8 Authentication credentials invalid\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cre") + "\r\n"),
            "535 5.7.8 Authentication credentials invalid\r\n"
            "421 4.7.0 Too many authentication failures\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
  EXPECT_FALSE(session->authenticated());
}

TEST_F(SessionTest, AuthenticationRequiredWithoutAnonymousRole) {
  options.auth_in_clear = true;
  options.anonymous_role.reset();
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "530 5.7.0 Authentication required\r\n");
  EXPECT_TRUE(policy.checks.empty());
}

TEST_F(SessionTest, AuthOverClearNonLoopbackNeedsEncryption) {
  options.auth_in_clear = false;
  options.tls_available = true;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cret") + "\r\n"),
            "538 5.7.11 Encryption required for requested authentication mechanism\r\n");
  EXPECT_FALSE(session->authenticated());
  say("STARTTLS\r\n");
  session->tls_started();
  say("EHLO c\r\n");
  EXPECT_EQ(say("AUTH PLAIN " + plain("", "legacy-app", "s3cret") + "\r\n"),
            "235 2.7.0 Authentication successful\r\n");
}

TEST_F(SessionTest, OverLongCommandLine) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say(std::string(600, 'A') + "\r\nNOOP\r\n"),
            "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
  // Split over reads, without a line end for a long while: memory stays bounded.
  for (int i = 0; i < 100; ++i) EXPECT_EQ(say(std::string(1000, 'B')), "");
  EXPECT_EQ(say("\r\nNOOP\r\n"), "500 5.5.2 Line too long\r\n250 2.0.0 Ok\r\n");
  // 510 characters + CRLF = 512: the longest allowed line.
  EXPECT_EQ(say("NOOP " + std::string(505, 'x') + "\r\n"), "250 2.0.0 Ok\r\n");
  EXPECT_EQ(say("NOOP " + std::string(506, 'x') + "\r\n"), "500 5.5.2 Line too long\r\n");
}

TEST_F(SessionTest, ErrorLimitCloses) {
  open();
  for (int i = 0; i < 9; ++i) {
    EXPECT_EQ(say("BOGUS\r\n"), "500 5.5.1 Command unrecognized\r\n");
  }
  EXPECT_EQ(say("BOGUS\r\nNOOP\r\n"),
            "500 5.5.1 Command unrecognized\r\n421 4.7.0 Too many errors\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
  EXPECT_EQ(session->state(), SessionState::Closed);
}

TEST_F(SessionTest, PipeliningBeforeGreeting) {
  session = std::make_unique<SmtpServerSession>(options, &credentials, &policy);
  session->start();
  EXPECT_EQ(say("EHLO c\r\n"), "554 5.5.0 Protocol error: data sent before the greeting\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
}

TEST_F(SessionTest, RsetBetweenMessages) {
  open();
  begin_data();
  say("one\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  session->delivery_finished(250, "2.0.0", "Ok: queued as 1");
  EXPECT_EQ(say("RSET\r\nMAIL FROM:<c@example.com>\r\nRCPT TO:<d@example.org>\r\n"),
            "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RSET\r\nDATA\r\n"), "250 2.0.0 Ok\r\n503 5.5.1 Need MAIL command\r\n");
  EXPECT_EQ(say("MAIL FROM:<e@example.com>\r\nRCPT TO:<f@example.org>\r\nDATA\r\ntwo\r\n.\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->envelope_from, "e@example.com");
  EXPECT_EQ(last.submission->recipients, std::vector<std::string>{"f@example.org"});
  EXPECT_EQ(last.submission->data, "two\r\n");
}

TEST_F(SessionTest, VrfyHelpNoop) {
  open();
  EXPECT_EQ(say("VRFY someone\r\n"),
            "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n");
  EXPECT_EQ(say("HELP\r\n"),
            "214 2.0.0 Commands: EHLO HELO MAIL RCPT DATA BDAT RSET NOOP QUIT VRFY HELP AUTH\r\n");
  EXPECT_EQ(say("noop\r\n"), "250 2.0.0 Ok\r\n");
}

TEST_F(SessionTest, SequenceErrors) {
  open();
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "503 5.5.1 Send EHLO or HELO first\r\n");
  say("EHLO c\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\n"), "503 5.5.1 Need MAIL command\r\n");
  EXPECT_EQ(say("DATA\r\n"), "503 5.5.1 Need MAIL command\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nDATA\r\n"),
            "250 2.1.0 Ok\r\n503 5.5.1 Need RCPT command\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "503 5.5.1 Nested MAIL command\r\n");
  EXPECT_EQ(say("MAIL FROM:a@example.com\r\n"), "503 5.5.1 Nested MAIL command\r\n");
  say("RSET\r\n");
  EXPECT_EQ(say("MAIL FROM a@example.com\r\n"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
  // Without angle brackets, as Postfix accepts (issue 13).
  EXPECT_EQ(say("MAIL FROM:a@example.com\r\n"), "250 2.1.0 Ok\r\n");
}

TEST_F(SessionTest, AddressSyntax) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<not an address>\r\n"), "501 5.1.7 Bad sender address syntax\r\n");
  EXPECT_EQ(say("MAIL FROM:<>\r\n"), "250 2.1.0 Ok\r\n");  // null sender
  EXPECT_EQ(say("RCPT TO:<>\r\n"), "501 5.1.3 Bad recipient address syntax\r\n");
  EXPECT_EQ(say("RCPT TO:<@relay.example:b@example.org>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO: <c@example.org>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:<d@example.org> NOTIFY=NEVER\r\n"),
            "555 5.5.4 Unsupported RCPT parameter\r\n");
  EXPECT_EQ(say("RCPT TO:<B@EXAMPLE.ORG>\r\n"), "250 2.1.5 Ok\r\n");
  say("DATA\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->envelope_from, "");
  // Domains compare case-insensitively, local parts exactly.
  EXPECT_EQ(last.submission->recipients,
            (std::vector<std::string>{"b@example.org", "c@example.org", "B@EXAMPLE.ORG"}));
}

TEST_F(SessionTest, DuplicateRecipientsCollapse) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\nRCPT TO:<b@Example.ORG>\r\n"),
            "250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n");
  say("DATA\r\n.\r\n");
  EXPECT_EQ(last.submission->recipients, std::vector<std::string>{"b@example.org"});
}

TEST_F(SessionTest, InjectedAddressValidatorIsUsed) {
  options.validate_address = [](std::string_view a) { return a.ends_with(".example"); };
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "501 5.1.7 Bad sender address syntax\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@b.example>\r\n"), "250 2.1.0 Ok\r\n");
}

TEST_F(SessionTest, NonAsciiAddressesNeedSmtpUtf8) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<j\xc3\xb6rg@example.com>\r\n"),
            "553 5.6.7 Non-ASCII sender address requires SMTPUTF8\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@b\xc3\xbc.example>\r\n"),
            "250 2.1.0 Ok\r\n553 5.6.7 Non-ASCII recipient address requires SMTPUTF8\r\n");
  say("RSET\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<b@b\xc3\xbc.example>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  say("DATA\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_TRUE(last.submission->smtputf8);
}

TEST_F(SessionTest, PolicyVerdictsAtMailAndRcpt) {
  policy.judge = [](const PolicyRequest& r) {
    PolicyDecision d;
    if (r.envelope_from == "evil@example.com") {
      d.verdict = Verdict::SenderNotAllowed;
      d.reason = "sender evil@example.com not allowed for role anon";
    } else if (r.envelope_from == "busy@example.com") {
      d.verdict = Verdict::RateLimited;
      d.limit_text = "50/second";
      d.retry_after_ms = 2500;
    } else if (r.recipients > 2) {
      d.verdict = Verdict::TooManyRecipients;
      d.reason = "3 recipients exceed max_recipients 2 of role anon";
    }
    return d;
  };
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<evil@example.com>\r\n"),
            "550 5.7.1 sender evil@example.com not allowed for role anon\r\n");
  EXPECT_EQ(say("MAIL FROM:<busy@example.com>\r\n"),
            "450 4.7.1 Rate limit 50/second exceeded, try again in 3 seconds\r\n");
  EXPECT_EQ(
      say("MAIL FROM:<a@example.com>\r\nRCPT TO:<1@example.org>\r\nRCPT TO:<2@example.org>\r\n"
          "RCPT TO:<3@example.org>\r\n"),
      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
      "452 4.5.3 3 recipients exceed max_recipients 2 of role anon\r\n");
}

TEST_F(SessionTest, RecipientHardCap) {
  options.max_recipients = 2;
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(
      say("MAIL FROM:<a@example.com>\r\nRCPT TO:<1@example.org>\r\nRCPT TO:<2@example.org>\r\n"
          "RCPT TO:<3@example.org>\r\n"),
      "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n452 4.5.3 Too many recipients\r\n");
}

TEST_F(SessionTest, IdleTimeoutAndShutdown) {
  open();
  auto out = session->timeout();
  EXPECT_EQ(out.reply, "421 4.4.2 Idle timeout, closing connection\r\n");
  EXPECT_EQ(out.event, SessionEvent::Close);
  EXPECT_EQ(session->timeout().reply, "");  // once
  open();
  EXPECT_FALSE(session->busy());
  out = session->shutdown();
  EXPECT_EQ(out.reply, "421 4.3.2 Service shutting down\r\n");
  EXPECT_EQ(out.event, SessionEvent::Close);
}

TEST_F(SessionTest, TimeoutKindsSaySo) {
  open();
  EXPECT_EQ(session->timeout(Timeout::CommandLine).reply,
            "421 4.4.2 Command line not received in time, closing connection\r\n");
  EXPECT_EQ(session->state(), SessionState::Closed);
  open();
  begin_data();
  auto out = session->timeout(Timeout::DataRate);
  EXPECT_EQ(out.reply, "421 4.4.2 Message data too slow, closing connection\r\n");
  EXPECT_EQ(out.event, SessionEvent::Close);
  EXPECT_FALSE(out.submission.has_value());
}

// ---------------------------------------------------------------- junk commands (issue 7)

const std::string kJunkClose =
    "421 4.7.0 Too many commands without a message, closing connection\r\n";

TEST_F(SessionTest, JunkCommandLimitCloses) {
  options.max_junk_commands = 5;
  open();
  EXPECT_EQ(say("EHLO c\r\n").substr(0, 4), "250-");  // 1
  EXPECT_EQ(say("NOOP\r\n"), "250 2.0.0 Ok\r\n");     // 2
  EXPECT_EQ(say("RSET\r\n"), "250 2.0.0 Ok\r\n");     // 3
  EXPECT_EQ(say("VRFY x\r\n").substr(0, 4), "252 ");  // 4
  EXPECT_EQ(say("HELP\r\n").substr(0, 4), "214 ");    // 5
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_EQ(say("NOOP\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n" + kJunkClose);  // 6: over
  EXPECT_EQ(last.event, SessionEvent::Close);
  EXPECT_EQ(session->state(), SessionState::Closed);
  EXPECT_EQ(say("NOOP\r\n"), "");
}

// Whatever is refused counts too, policy refusals included (they do not count as errors).
TEST_F(SessionTest, RefusedAndRepeatedCommandsAreJunk) {
  options.max_junk_commands = 4;
  policy.judge = [](const PolicyRequest& r) {
    PolicyDecision d;
    if (r.envelope_from == "bad@example.com") d.verdict = Verdict::SenderNotAllowed;
    return d;
  };
  open();
  say("EHLO c\r\n");  // junk 1
  EXPECT_EQ(say("BOGUS\r\n"), "500 5.5.1 Command unrecognized\r\n");
  EXPECT_EQ(say("MAIL FROM:<bad@example.com>\r\n").substr(0, 4), "550 ");  // junk 3
  // Not junk: the transaction moves forward.
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"),
            "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n");
  // Junk 4 and 5: the same recipient again.
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:<b@EXAMPLE.ORG>\r\n"), "250 2.1.5 Ok\r\n" + kJunkClose);
}

TEST_F(SessionTest, TransactionCommandsAreNotJunk) {
  options.max_junk_commands = 1;
  open();
  say("EHLO c\r\n");  // 1
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
                  "RCPT TO:<c@example.org>\r\nDATA\r\nx\r\n.\r\n"),
              "250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n250 2.1.5 Ok\r\n"
              "354 End data with <CR><LF>.<CR><LF>\r\n");
    ASSERT_EQ(last.event, SessionEvent::Deliver) << i;
    // A failed delivery does not reset the count, but it is not the client's junk either.
    EXPECT_EQ(session->delivery_finished(451, "4.4.1", "later").reply, "451 4.4.1 later\r\n");
  }
  EXPECT_EQ(say("NOOP\r\n"), "250 2.0.0 Ok\r\n" + kJunkClose);  // 2: over
}

TEST_F(SessionTest, AcceptedMessageResetsTheJunkCount) {
  options.max_junk_commands = 3;
  open();
  say("EHLO c\r\nNOOP\r\nNOOP\r\n");  // 3
  EXPECT_EQ(last.event, SessionEvent::None);
  say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  session->delivery_finished(250, "2.0.0", "Ok: queued as 1");
  EXPECT_EQ(say("NOOP\r\nRSET\r\nNOOP\r\n"), "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_EQ(say("NOOP\r\n"), "250 2.0.0 Ok\r\n" + kJunkClose);
}

// The limit applies the same wherever the reads split a pipelined batch.
TEST_F(SessionTest, JunkLimitSplitAtEveryByteBoundary) {
  options.max_junk_commands = 3;
  const std::string batch = "NOOP\r\nRSET\r\nVRFY a\r\nNOOP\r\nNOOP\r\n";
  const std::string expected =
      "250 2.0.0 Ok\r\n250 2.0.0 Ok\r\n"
      "252 2.5.0 Cannot VRFY user, but will accept message and attempt delivery\r\n"
      "250 2.0.0 Ok\r\n" +
      kJunkClose;
  for (size_t cut = 0; cut <= batch.size(); ++cut) {
    open();
    std::string replies = say(batch.substr(0, cut));
    replies += say(batch.substr(cut));
    EXPECT_EQ(replies, expected) << cut;
    EXPECT_EQ(session->state(), SessionState::Closed) << cut;
  }
  open();
  std::string replies;
  for (char c : batch) replies += say(std::string(1, c));
  EXPECT_EQ(replies, expected);
  EXPECT_EQ(session->state(), SessionState::Closed);
}

// ---------------------------------------------------------------- partial lines (glue deadlines)

TEST_F(SessionTest, LinePendingWhileALineIsIncomplete) {
  options.auth_in_clear = true;
  open();
  EXPECT_FALSE(session->line_pending());
  const std::string line = "EHLO client.example\r\n";
  for (size_t i = 0; i < line.size(); ++i) {
    say(line.substr(i, 1));
    EXPECT_EQ(session->line_pending(), i + 1 < line.size()) << i;
  }
  EXPECT_EQ(say("NOOP\r\nNO"), "250 2.0.0 Ok\r\n");  // a complete line, then part of one
  EXPECT_TRUE(session->line_pending());
  say("OP\r\n");
  EXPECT_FALSE(session->line_pending());

  say(std::string(600, 'x'));  // too long: skipped to its end, still one pending line
  EXPECT_TRUE(session->line_pending());
  EXPECT_EQ(say("\r\n"), "500 5.5.2 Line too long\r\n");
  EXPECT_FALSE(session->line_pending());

  EXPECT_EQ(say("AUTH PLAIN\r\n"), "334 \r\n");
  EXPECT_FALSE(session->line_pending());
  say("AGxl");
  EXPECT_TRUE(session->line_pending());
  say("\r\n");
  EXPECT_FALSE(session->line_pending());
}

TEST_F(SessionTest, MessageDataIsNotALinePending) {
  open();
  begin_data();
  say("Subject: x");  // the data deadline is the glue's, not the line deadline
  EXPECT_FALSE(session->line_pending());
  say("\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  say("NOOP");  // pipelined behind the delivery: the client is waiting for us
  EXPECT_FALSE(session->line_pending());
  session->delivery_finished(250, "2.0.0", "Ok");
  EXPECT_TRUE(session->line_pending());
}

TEST_F(SessionTest, PipelinedInputWhileAwaitingDeliveryIsBounded) {
  options.max_pending_input = 100;
  open();
  begin_data();
  say("x\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  say(std::string(200, 'N'));
  auto done = session->delivery_finished(250, "2.0.0", "Ok");
  EXPECT_EQ(done.reply, "250 2.0.0 Ok\r\n421 4.7.0 Too much pipelined input\r\n");
  EXPECT_EQ(done.event, SessionEvent::Close);
}

TEST_F(SessionTest, LargeMessageInChunks) {
  options.max_message_bytes = 10'000'000;
  open();
  begin_data();
  std::string chunk;
  for (int i = 0; i < 1000; ++i) chunk += "line " + std::to_string(i) + " .. text\r\n";
  std::string expected;
  for (int i = 0; i < 50; ++i) {
    say(chunk);
    expected += chunk;
    ASSERT_EQ(last.event, SessionEvent::None);
  }
  say(".\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, expected);
}

// ---- DSN (RFC 3461): offered and honoured in spool mode only ----

TEST_F(SessionTest, DsnOfferedOnlyWhenEnabled) {
  open();
  EXPECT_EQ(say("EHLO c\r\n").find("DSN"), std::string::npos);
  options.dsn = true;
  open();
  EXPECT_EQ(say("EHLO c\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250-ENHANCEDSTATUSCODES\r\n250 DSN\r\n");
  // HELO gets no extensions.
  EXPECT_EQ(say("HELO c\r\n"), "250 mx.test\r\n");
}

TEST_F(SessionTest, DsnParametersWithoutDsnGet555) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> RET=HDRS\r\n"),
            "555 5.5.4 Unsupported MAIL parameter\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> ENVID=abc\r\n"),
            "555 5.5.4 Unsupported MAIL parameter\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org> NOTIFY=FAILURE\r\n"),
            "555 5.5.4 Unsupported RCPT parameter\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org> ORCPT=rfc822;b@example.org\r\n"),
            "555 5.5.4 Unsupported RCPT parameter\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\nDATA\r\n.\r\n"),
            "250 2.1.5 Ok\r\n354 End data with <CR><LF>.<CR><LF>\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_TRUE(last.submission->dsn.recipients.empty());
}

// The whole dialogue fed in two pieces cut at every byte, and byte by byte.
TEST_F(SessionTest, DsnParametersCarriedIntoTheSubmissionSplitAtEveryByte) {
  options.dsn = true;
  const std::string dialogue =
      "EHLO c\r\n"
      "MAIL FROM:<a@example.com> ret=full ENVID=QQ+2Bid+3D1 SIZE=10\r\n"
      "RCPT TO:<b@example.org> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;B+2Bx@example.org\r\n"
      "RCPT TO:<c@example.org>\r\n"
      "RCPT TO:<d@example.org> notify=never\r\n"
      "RCPT TO:<b@EXAMPLE.org> NOTIFY=DELAY\r\n"  // a duplicate keeps its first parameters
      "DATA\r\nSubject: x\r\n\r\nbody\r\n.\r\n";
  auto check = [&](size_t cut) {
    ASSERT_EQ(last.event, SessionEvent::Deliver) << cut;
    const Submission& got = *last.submission;
    EXPECT_EQ(got.dsn.ret, DsnRet::Full) << cut;
    EXPECT_EQ(got.dsn.envid, "QQ+id=1") << cut;
    ASSERT_EQ(got.recipients.size(), 3u) << cut;
    ASSERT_EQ(got.dsn.recipients.size(), 3u) << cut;
    EXPECT_EQ(got.dsn.recipients[0].notify, dsn_notify::kSuccess | dsn_notify::kFailure) << cut;
    EXPECT_EQ(got.dsn.recipients[0].orcpt, "rfc822;B+x@example.org") << cut;
    EXPECT_EQ(got.dsn.recipients[1], DsnRecipientRequest{}) << cut;
    EXPECT_EQ(got.dsn.recipients[2].notify, dsn_notify::kNever) << cut;
    EXPECT_EQ(got.dsn.recipients[2].orcpt, "") << cut;
  };
  for (size_t cut = 0; cut <= dialogue.size(); ++cut) {
    open();
    std::string replies = say(dialogue.substr(0, cut));
    if (cut < dialogue.size()) replies += say(dialogue.substr(cut));
    EXPECT_EQ(replies.find(" 5."), std::string::npos) << cut << ": " << replies;
    check(cut);
  }
  open();
  for (size_t i = 0; i < dialogue.size(); ++i) say(dialogue.substr(i, 1));
  check(dialogue.size());
}

TEST_F(SessionTest, DsnParameterSyntaxErrorsGet501) {
  options.dsn = true;
  options.max_errors = 100;  // every refusal below counts as an error
  open();
  say("EHLO c\r\n");
  const char* bad_mail[] = {"RET=BOTH",  "RET=",           "RET",        "RET=FULL RET=HDRS",
                            "ENVID=",    "ENVID=a+2",      "ENVID=a+2g", "ENVID=a+0D+0Ab",
                            "ENVID=a=b", "ENVID=x ENVID=y"};
  for (const char* p : bad_mail) {
    EXPECT_EQ(say(std::string("MAIL FROM:<a@example.com> ") + p + "\r\n"),
              "501 5.5.4 Bad DSN parameter\r\n")
        << p;
  }
  EXPECT_EQ(say("MAIL FROM:<a@example.com> ENVID=" + std::string(101, 'x') + "\r\n"),
            "501 5.5.4 Bad DSN parameter\r\n");
  EXPECT_EQ(say("MAIL FROM:<a@example.com> ENVID=" + std::string(100, 'x') + "\r\n"),
            "250 2.1.0 Ok\r\n");
  const char* bad_rcpt[] = {"NOTIFY=",
                            "NOTIFY=NEVER,FAILURE",
                            "NOTIFY=FAILURE,",
                            "NOTIFY=SOMETIMES",
                            "NOTIFY=FAILURE NOTIFY=DELAY",
                            "ORCPT=b@example.org",
                            "ORCPT=;b@example.org",
                            "ORCPT=rfc822;",
                            "ORCPT=rfc 822;b@example.org",
                            "ORCPT=rfc822;b+40example.org+",
                            "ORCPT=rfc822;a@b ORCPT=rfc822;c@d"};
  for (const char* p : bad_rcpt) {
    EXPECT_EQ(say(std::string("RCPT TO:<b@example.org> ") + p + "\r\n"),
              "501 5.5.4 Bad DSN parameter\r\n")
        << p;
  }
  // Unknown parameters stay 555 with DSN offered.
  EXPECT_EQ(say("RCPT TO:<b@example.org> FOO=BAR\r\n"), "555 5.5.4 Unsupported RCPT parameter\r\n");
  EXPECT_EQ(say("RCPT TO:<b@example.org> NOTIFY=FAILURE,DELAY ORCPT=RFC822;b+40example.org\r\n"),
            "250 2.1.5 Ok\r\n");
  say("DATA\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  ASSERT_EQ(last.submission->dsn.recipients.size(), 1u);
  EXPECT_EQ(last.submission->dsn.recipients[0].orcpt, "RFC822;b@example.org");
  EXPECT_EQ(last.submission->dsn.envid, std::string(100, 'x'));
}

TEST_F(SessionTest, DsnParametersForgottenAfterRset) {
  options.dsn = true;
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com> RET=HDRS ENVID=one\r\nRSET\r\n");
  say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->dsn.ret, DsnRet::Unspecified);
  EXPECT_EQ(last.submission->dsn.envid, "");
  ASSERT_EQ(last.submission->dsn.recipients.size(), 1u);
  EXPECT_EQ(last.submission->dsn.recipients[0], DsnRecipientRequest{});
}

// ---- issue 13: leniency, refusals that leave a trace, implicit TLS, CHUNKING ----

TEST_F(SessionTest, AddressesWithoutAngleBracketsAsPostfix) {
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:a@example.com SIZE=10\r\n"), "250 2.1.0 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:b@example.org\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO: c@example.org\r\n"), "250 2.1.5 Ok\r\n");
  EXPECT_EQ(say("RCPT TO:d@example.org>\r\n"), "501 5.5.4 Syntax: RCPT TO:<address>\r\n");
  EXPECT_EQ(say("RCPT TO:not-an-address\r\n"), "501 5.1.3 Bad recipient address syntax\r\n");
  say("DATA\r\nx\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->envelope_from, "a@example.com");
  EXPECT_EQ(last.submission->recipients,
            (std::vector<std::string>{"b@example.org", "c@example.org"}));
  open();
  say("EHLO c\r\n");
  EXPECT_EQ(say("MAIL FROM:\r\n"), "501 5.5.4 Syntax: MAIL FROM:<address>\r\n");
}

TEST_F(SessionTest, SmtpUtf8ParameterIsCarriedForTheReceivedHeader) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com> SMTPUTF8\r\nRCPT TO:<b@example.org>\r\n");
  say("DATA\r\nx\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_TRUE(last.submission->utf8_requested);
  EXPECT_FALSE(last.submission->smtputf8);  // ASCII addresses
  session->delivery_finished(250, "2.0.0", "Ok");
  say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\nx\r\n.\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_FALSE(last.submission->utf8_requested);
}

TEST_F(SessionTest, SizeAndAuthenticationRefusalsAreReportedToTheGlue) {
  open();
  say("EHLO c\r\n");
  say("MAIL FROM:<a@example.com> SIZE=1001\r\n");
  ASSERT_EQ(last.limit_refusals.size(), 1u);
  EXPECT_NE(last.limit_refusals[0].find("SIZE=1001"), std::string::npos);
  EXPECT_NE(last.limit_refusals[0].find("1000"), std::string::npos);
  begin_data();
  say(std::string(1200, 'x') + "\r\n.\r\n");
  EXPECT_EQ(last.reply,
            "552 5.3.4 Message size exceeds fixed maximum message size: the limit is 1000 "
            "bytes\r\n");
  EXPECT_EQ(last.limit_refusals.size(), 1u);
  options.anonymous_role.reset();
  open();
  say("EHLO c\r\n");
  say("MAIL FROM:<a@example.com>\r\n");
  EXPECT_EQ(last.reply, "530 5.7.0 Authentication required\r\n");
  EXPECT_EQ(last.limit_refusals.size(), 1u);
}

TEST_F(SessionTest, FailedAuthNamesTheUserNeverThePassword) {
  options.auth_in_clear = true;
  open();
  say("EHLO c\r\n");
  say("AUTH PLAIN " + plain("", "legacy-app", "wrong-pw") + "\r\n");
  ASSERT_TRUE(last.auth_failed);
  EXPECT_EQ(last.auth_user_tried, "legacy-app");
  say("AUTH LOGIN " + text::base64_encode("someone") + "\r\n" + text::base64_encode("pw") + "\r\n");
  ASSERT_TRUE(last.auth_failed);
  EXPECT_EQ(last.auth_user_tried, "someone");
}

TEST_F(SessionTest, ImplicitTlsSessionIsTlsFromTheStart) {
  options.tls_available = true;
  options.implicit_tls = true;
  open();
  EXPECT_TRUE(session->tls_active());
  EXPECT_EQ(say("EHLO c\r\n"),
            "250-mx.test\r\n" + kCapsTail + "250-ENHANCEDSTATUSCODES\r\n250 AUTH PLAIN LOGIN\r\n");
  EXPECT_EQ(say("STARTTLS\r\n"), "503 5.5.1 TLS already active\r\n");
}

TEST_F(SessionTest, IdleMeansNoTransaction) {
  open();
  say("EHLO c\r\n");
  EXPECT_FALSE(session->in_transaction());
  say("MAIL FROM:<a@example.com>\r\n");
  EXPECT_TRUE(session->in_transaction());
  EXPECT_FALSE(session->busy());  // not receiving data, but the glue waits for the transaction
  say("RSET\r\n");
  EXPECT_FALSE(session->in_transaction());
}

// CHUNKING (RFC 3030)

TEST_F(SessionTest, BdatChunksMakeOneMessageBinarySafe) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  // Octets that DATA would treat specially: a lone dot line, bare LF, a NUL byte.
  std::string first = "Subject: x\r\n\r\n.\r\nline\n";
  std::string second = std::string("a\0b\r\n", 5);
  EXPECT_EQ(say("BDAT " + std::to_string(first.size()) + "\r\n" + first),
            "250 2.0.0 " + std::to_string(first.size()) + " octets received\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_EQ(say("BDAT " + std::to_string(second.size()) + " last\r\n" + second), "");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, first + second);
  EXPECT_EQ(last.submission->recipients, std::vector<std::string>{"b@example.org"});
  EXPECT_EQ(session->state(), SessionState::AwaitingDelivery);
  EXPECT_EQ(session->delivery_finished(250, "2.0.0", "Ok").reply, "250 2.0.0 Ok\r\n");
  EXPECT_FALSE(session->in_transaction());
}

TEST_F(SessionTest, BdatZeroLastEndsTheMessage) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  EXPECT_EQ(say("BDAT 3\r\nabcBDAT 0 LAST\r\n"), "250 2.0.0 3 octets received\r\n");
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, "abc");
}

// The whole pipelined dialogue in two pieces cut at every byte, and byte by byte: the chunk
// octets are never taken for commands, and the replies are the same wherever the cut falls.
TEST_F(SessionTest, BdatPipelinedSplitAtEveryByte) {
  const std::string body = "Subject: s\r\n\r\nRSET\r\nQUIT\r\n";
  const std::string dialogue =
      "EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n"
      "BDAT 12\r\n" +
      body.substr(0, 12) + "BDAT " + std::to_string(body.size() - 12) + " LAST\r\n" +
      body.substr(12);
  const std::string expected_replies = "250-mx.test\r\n" + kCapsTail +
                                       "250 ENHANCEDSTATUSCODES\r\n250 2.1.0 Ok\r\n"
                                       "250 2.1.5 Ok\r\n250 2.0.0 12 octets received\r\n";
  auto run_cut = [&](size_t cut) {
    open();
    std::string replies = say(dialogue.substr(0, cut));
    if (cut < dialogue.size()) replies += say(dialogue.substr(cut));
    EXPECT_EQ(replies, expected_replies) << cut;
    ASSERT_EQ(last.event, SessionEvent::Deliver) << cut;
    EXPECT_EQ(last.submission->data, body) << cut;
  };
  for (size_t cut = 0; cut <= dialogue.size(); ++cut) run_cut(cut);
  open();
  std::string replies;
  for (size_t i = 0; i < dialogue.size(); ++i) replies += say(dialogue.substr(i, 1));
  EXPECT_EQ(replies, expected_replies);
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data, body);
}

TEST_F(SessionTest, BdatRefusedChunksAreStillConsumed) {
  open();
  say("EHLO c\r\n");
  // No transaction: the 5 octets ("NOOP\n" would be a command) are read and dropped.
  EXPECT_EQ(say("BDAT 5\r\nNOOP\nNOOP\r\n"), "503 5.5.1 Need MAIL command\r\n250 2.0.0 Ok\r\n");
  // After a refused RCPT: no recipient, the chunk is consumed and refused.
  EXPECT_EQ(say("MAIL FROM:<a@example.com>\r\nRCPT TO:<>\r\nBDAT 4 LAST\r\nQUIT"),
            "250 2.1.0 Ok\r\n501 5.1.3 Bad recipient address syntax\r\n"
            "503 5.5.1 Need RCPT command\r\n");
  EXPECT_EQ(session->state(), SessionState::Command);
  EXPECT_EQ(last.event, SessionEvent::None);
  // DATA after BDAT in the same transaction is refused; RSET starts over.
  EXPECT_EQ(say("RCPT TO:<b@example.org>\r\nBDAT 2\r\nabDATA\r\n"),
            "250 2.1.5 Ok\r\n250 2.0.0 2 octets received\r\n"
            "503 5.5.1 DATA after BDAT: send the rest with BDAT\r\n");
  EXPECT_EQ(say("RSET\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nDATA\r\n"),
            "250 2.0.0 Ok\r\n250 2.1.0 Ok\r\n250 2.1.5 Ok\r\n"
            "354 End data with <CR><LF>.<CR><LF>\r\n");
}

TEST_F(SessionTest, BdatOverTheSizeLimitIs552AndEndsTheTransaction) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  EXPECT_EQ(say("BDAT 600\r\n" + std::string(600, 'x')), "250 2.0.0 600 octets received\r\n");
  // Over the limit with the second chunk: read in full, then 552; the pipelined third chunk
  // finds no transaction.
  EXPECT_EQ(say("BDAT 401\r\n" + std::string(401, 'y') + "BDAT 1 LAST\r\nz"),
            "552 5.3.4 Message size exceeds fixed maximum message size: the limit is 1000 "
            "bytes\r\n503 5.5.1 Need MAIL command\r\n");
  ASSERT_EQ(last.limit_refusals.size(), 1u);
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_FALSE(session->in_transaction());
  // Exactly the limit passes.
  say("MAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  say("BDAT 1000 LAST\r\n" + std::string(1000, 'w'));
  ASSERT_EQ(last.event, SessionEvent::Deliver);
  EXPECT_EQ(last.submission->data.size(), 1000u);
}

TEST_F(SessionTest, BdatHugeSizeDoesNotOverflow) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\nBDAT 10\r\n0123456789");
  EXPECT_EQ(say("BDAT 18446744073709551615 LAST\r\nabc"), "");
  EXPECT_EQ(session->state(), SessionState::Chunk);
  EXPECT_TRUE(session->busy());
}

TEST_F(SessionTest, BdatSyntaxErrorClosesTheSession) {
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  EXPECT_EQ(say("BDAT x\r\n"), "501 5.5.4 Syntax: BDAT size [LAST]; closing connection\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
  open();
  say("EHLO c\r\n");
  say("BDAT 5 MORE\r\n");
  EXPECT_EQ(last.event, SessionEvent::Close);
}

TEST_F(SessionTest, BdatAsksTheBudgetBeforeAllocating) {
  uint64_t granted = 0;
  options.reserve_data = [&](uint64_t total) {
    if (total > 200'000) return false;
    granted = total;
    return true;
  };
  options.max_message_bytes = 10'000'000;
  open();
  say("EHLO c\r\nMAIL FROM:<a@example.com>\r\nRCPT TO:<b@example.org>\r\n");
  std::string chunk(300'000, 'q');
  EXPECT_EQ(say("BDAT 300000 LAST\r\n" + chunk),
            "451 4.3.1 Insufficient system storage, try again later\r\n");
  EXPECT_EQ(last.event, SessionEvent::None);
  EXPECT_LE(granted, 200'000u);
  EXPECT_FALSE(session->in_transaction());
}

}  // namespace
}  // namespace mailcar::smtp
