#include "mailcar/mime.hpp"

#include <gtest/gtest.h>

#include <ctime>
#include <random>
#include <string>
#include <vector>

#include "mailcar/address.hpp"
#include "message/mime_reader.hpp"

namespace mailcar {
namespace {

using testing::content_type_of;
using testing::decode_2047;
using testing::decoded_body;
using testing::header_param;
using testing::parse_entity;
using testing::Part;

constexpr int64_t kDate = 1700000000;

// Every line ends in CRLF, no bare CR/LF, no line over 998 octets.
void expect_wire_clean(const std::string& data) {
  size_t line = 0, longest = 0;
  for (size_t i = 0; i < data.size(); ++i) {
    if (data[i] == '\r') {
      ASSERT_TRUE(i + 1 < data.size() && data[i + 1] == '\n') << "bare CR at " << i;
    } else if (data[i] == '\n') {
      ASSERT_TRUE(i > 0 && data[i - 1] == '\r') << "bare LF at " << i;
      longest = std::max(longest, line);
      line = 0;
      continue;
    }
    if (data[i] != '\r') ++line;
  }
  EXPECT_EQ(line, 0u) << "data does not end with CRLF";
  EXPECT_LE(longest, 998u);
}

// Header lines (up to the first empty line) are at most 78 octets.
void expect_headers_folded(const std::string& data) {
  size_t end = data.find("\r\n\r\n");
  size_t pos = 0;
  while (pos < end) {
    size_t eol = data.find("\r\n", pos);
    EXPECT_LE(eol - pos, 78u) << data.substr(pos, eol - pos);
    pos = eol + 2;
  }
}

std::string crlf(std::string s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\r' || s[i] == '\n') {
      out += "\r\n";
      if (s[i] == '\r' && i + 1 < s.size() && s[i + 1] == '\n') ++i;
    } else {
      out.push_back(s[i]);
    }
  }
  if (!out.empty() && !out.ends_with("\r\n")) out += "\r\n";
  return out;
}

MessageContent basic() {
  MessageContent c;
  c.from = {"sender@example.com", "Sender"};
  c.to = {{"a@example.com", "A"}};
  c.subject = "Hello";
  c.body_text = "Hi there.\r\n";
  return c;
}

OutboundMessage build_ok(const MessageContent& c, BuildOptions o = {"id1@test", kDate, "host"}) {
  auto r = build_message(c, o);
  EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().message);
  return r.ok() ? *r : OutboundMessage{};
}

std::vector<Mailbox> decoded_list(const Part& p, std::string_view header) {
  auto v = p.header(header);
  if (!v) return {};
  auto list = parse_address_list(*v);
  EXPECT_TRUE(list.ok()) << *v;
  if (!list.ok()) return {};
  for (auto& m : *list) m.name = decode_2047(m.name);
  return *list;
}

TEST(Date, Rfc5322Format) {
  EXPECT_EQ(format_rfc5322_date(0), "Thu, 01 Jan 1970 00:00:00 +0000");
  EXPECT_EQ(format_rfc5322_date(1700000000), "Tue, 14 Nov 2023 22:13:20 +0000");
  EXPECT_EQ(format_rfc5322_date(951782400), "Tue, 29 Feb 2000 00:00:00 +0000");
  EXPECT_EQ(format_rfc5322_date(-1), "Wed, 31 Dec 1969 23:59:59 +0000");
  EXPECT_EQ(format_rfc5322_date(4102444800), "Fri, 01 Jan 2100 00:00:00 +0000");
}

// The date per second is cached: every second, in any order, must still format as gmtime says.
TEST(Date, CachedFormatMatchesGmtimeOnRandomTimes) {
  std::mt19937_64 rng(12);
  std::uniform_int_distribution<int64_t> any(-2000000000LL, 32503680000LL);  // 1906 .. 3000
  for (int i = 0; i < 20000; ++i) {
    int64_t t = i % 3 == 0 ? 1700000000 + i / 3 : any(rng);  // runs of one second, then jumps
    time_t tt = static_cast<time_t>(t);
    tm parts{};
    ASSERT_NE(gmtime_r(&tt, &parts), nullptr);
    char want[64];
    strftime(want, sizeof want, "%a, %d %b %Y %H:%M:%S +0000", &parts);
    ASSERT_EQ(format_rfc5322_date(t), want) << t;
    std::string appended = "Date: ";
    append_rfc5322_date(appended, t);
    ASSERT_EQ(appended, std::string("Date: ") + want);
  }
}

TEST(MessageId, SafeCharactersAndSanitizedHost) {
  std::string id = make_message_id("mail host!.example.", 1234);
  EXPECT_TRUE(id.ends_with(".1234@mailhost.example")) << id;
  for (char c : id) {
    EXPECT_TRUE(isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '@' || c == '_' ||
                c == '-')
        << id;
  }
  EXPECT_TRUE(make_message_id("", 1).ends_with("@localhost"));
  EXPECT_NE(make_message_id("h", 1), make_message_id("h", 1));  // random part
  EXPECT_NE(make_message_id("h").find("@h"), std::string::npos);
}

TEST(DotStuff, Cases) {
  EXPECT_EQ(dot_stuff(""), ".\r\n");
  EXPECT_EQ(dot_stuff("a\r\n"), "a\r\n.\r\n");
  EXPECT_EQ(dot_stuff("a"), "a\r\n.\r\n");
  EXPECT_EQ(dot_stuff(".a\r\n.\r\n..\r\nb.c\r\n"), "..a\r\n..\r\n...\r\nb.c\r\n.\r\n");
  // Bare LF / CR cannot smuggle an end-of-data marker past the server.
  EXPECT_EQ(dot_stuff("a\n.\nb"), "a\r\n..\r\nb\r\n.\r\n");
  EXPECT_EQ(dot_stuff("a\r.\rb\r\n"), "a\r\n..\r\nb\r\n.\r\n");
}

TEST(DisplayName, AtomsQuotedAndEncoded) {
  EXPECT_EQ(encode_display_name("John Doe"), "John Doe");
  EXPECT_EQ(encode_display_name("Doe, John"), "\"Doe, John\"");
  EXPECT_EQ(encode_display_name("a \"b\" \\c"), "\"a \\\"b\\\" \\\\c\"");
  EXPECT_EQ(encode_display_name("J. Doe"), "\"J. Doe\"");
  std::string enc = encode_display_name("J\xC3\xB6rg");
  EXPECT_TRUE(enc.starts_with("=?UTF-8?")) << enc;
  EXPECT_EQ(decode_2047(enc), "J\xC3\xB6rg");
  // Something that looks like an encoded word must not be decoded by readers.
  EXPECT_EQ(decode_2047(encode_display_name("=?x?B?QQ==?=")), "=?x?B?QQ==?=");
}

TEST(DisplayName, LongUtf8IsSplitOnCharacterBoundaries) {
  std::string name;
  for (int i = 0; i < 40; ++i) name += "\xF0\x9F\x98\x80\xC3\xA9";  // 4- and 2-byte chars
  std::string enc = encode_display_name(name);
  EXPECT_EQ(decode_2047(enc), name);
  size_t start = 0;
  while (start < enc.size()) {
    size_t end = enc.find(' ', start);
    if (end == std::string::npos) end = enc.size();
    std::string word = enc.substr(start, end - start);
    EXPECT_LE(word.size(), 75u);
    EXPECT_TRUE(is_valid_utf8(decode_2047(word))) << "word splits a UTF-8 sequence: " << word;
    start = end + 1;
  }
}

TEST(FoldHeader, FoldsAtSpacesAndUnfoldsToTheOriginal) {
  std::string value;
  for (int i = 0; i < 30; ++i)
    value += (i ? ", " : "") + std::string("user") + std::to_string(i) + "@example.com";
  std::string folded = fold_header("To", value);
  expect_wire_clean(folded);
  expect_headers_folded(folded + "\r\n");
  std::string unfolded;
  for (size_t i = 0; i < folded.size(); ++i) {
    if (folded.compare(i, 2, "\r\n") == 0 && i + 2 < folded.size()) {
      ++i;
      continue;
    }
    unfolded.push_back(folded[i]);
  }
  EXPECT_EQ(unfolded, "To: " + value + "\r\n");
}

// The folding rule written plainly (the original implementation): the fast path for short
// lines and the in-place folding must give the same bytes.
std::string reference_fold(std::string_view name, std::string_view value) {
  std::string line = std::string(name) + ": " + std::string(value);
  std::string out;
  size_t line_len = 0, seg_start = 0;
  auto emit = [&](size_t end) {
    size_t seg_len = end - seg_start;
    if (line_len > 0 && line_len + seg_len > 78) {
      out += "\r\n";
      line_len = 0;
    }
    out.append(line, seg_start, seg_len);
    line_len += seg_len;
    seg_start = end;
  };
  for (size_t i = name.size() + 1; i + 1 < line.size(); ++i) {
    bool wsp = line[i] == ' ' || line[i] == '\t';
    bool next_wsp = line[i + 1] == ' ' || line[i + 1] == '\t';
    if (wsp && !next_wsp) emit(i);
  }
  emit(line.size());
  return out + "\r\n";
}

TEST(FoldHeader, MatchesTheReferenceOnRandomValues) {
  std::mt19937 rng(7);
  const char alphabet[] = "ab  \t,.@x";
  for (int i = 0; i < 20000; ++i) {
    std::string value(rng() % 200, 'a');
    for (char& c : value) c = alphabet[rng() % (sizeof alphabet - 1)];
    std::string name = i % 2 ? "To" : "Content-Disposition";
    ASSERT_EQ(fold_header(name, value), reference_fold(name, value)) << value;
  }
}

// addresses_checked skips only the address checks: valid (trimmed) addresses give the same
// message, and the names are still checked.
TEST(Build, AddressesCheckedGivesTheSameMessage) {
  MessageContent c = basic();
  c.reply_to = Mailbox{"r@example.com", "R \xC3\xA9"};
  c.cc = {{"c@EXAMPLE.com", ""}, {"a@Example.com", "dup"}};
  c.bcc = {{"\"q u\"@example.com", ""}};
  BuildOptions checked{"id1@test", kDate, "host"};
  checked.addresses_checked = true;
  EXPECT_EQ(build_ok(c, checked).data, build_ok(c).data);
  EXPECT_EQ(build_ok(c, checked).envelope_rcpts, build_ok(c).envelope_rcpts);
  c.cc[0].name = "bad\r\nBcc: x@y";
  auto r = build_message(c, checked);
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().message, "cc[0].name: contains CR or LF");
}

TEST(Build, TextOnlyHeadersAndEnvelope) {
  MessageContent c = basic();
  c.to.push_back({"b@example.com", ""});
  c.bcc = {{"hidden@example.net", "Secret"}};
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  expect_headers_folded(m.data);
  EXPECT_EQ(m.id, "id1@test");
  EXPECT_EQ(m.envelope_from, "sender@example.com");
  EXPECT_EQ(m.envelope_rcpts,
            (std::vector<std::string>{"a@example.com", "b@example.com", "hidden@example.net"}));
  EXPECT_FALSE(m.smtputf8);
  EXPECT_FALSE(m.eight_bit);
  EXPECT_EQ(m.data.find("hidden"), std::string::npos) << "Bcc leaked into the data";

  Part p = parse_entity(m.data);
  EXPECT_EQ(p.count("Bcc"), 0);
  EXPECT_EQ(p.count("Cc"), 0);
  EXPECT_EQ(p.count("Reply-To"), 0);
  EXPECT_EQ(p.header("Date"), "Tue, 14 Nov 2023 22:13:20 +0000");
  EXPECT_EQ(p.header("Message-ID"), "<id1@test>");
  EXPECT_EQ(p.header("MIME-Version"), "1.0");
  EXPECT_EQ(p.header("Subject"), "Hello");
  EXPECT_EQ(decoded_list(p, "From"), (std::vector<Mailbox>{{"sender@example.com", "Sender"}}));
  EXPECT_EQ(decoded_list(p, "To"),
            (std::vector<Mailbox>{{"a@example.com", "A"}, {"b@example.com", ""}}));
  EXPECT_EQ(content_type_of(p), "text/plain");
  EXPECT_EQ(header_param(*p.header("Content-Type"), "charset"), "utf-8");
  EXPECT_EQ(p.header("Content-Transfer-Encoding"), "7bit");
  EXPECT_EQ(decoded_body(p), "Hi there.\r\n");
}

TEST(Build, CcReplyToAndNonAsciiHeaders) {
  MessageContent c = basic();
  c.from.name = "Zo\xC3\xAB \"the\" Sender";
  c.cc = {{"c@example.com", "Doe, Jane"}};
  c.reply_to = Mailbox{"reply@example.com", "Support \xE2\x98\x83"};
  c.subject =
      "Gr\xC3\xBC\xC3\x9F"
      "e aus K\xC3\xB6ln, " +
      std::string(60, 'x') + " \xE2\x9C\x93 " +
      "and a rather long tail that needs folding over several lines of header text";
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  expect_headers_folded(m.data);
  EXPECT_FALSE(m.eight_bit);  // everything non-ASCII went into encoded words
  Part p = parse_entity(m.data);
  EXPECT_EQ(decode_2047(*p.header("Subject")), c.subject);
  EXPECT_EQ(decoded_list(p, "From"), (std::vector<Mailbox>{c.from}));
  EXPECT_EQ(decoded_list(p, "Cc"), (std::vector<Mailbox>{{"c@example.com", "Doe, Jane"}}));
  EXPECT_EQ(decoded_list(p, "Reply-To"), (std::vector<Mailbox>{*c.reply_to}));
  EXPECT_EQ(m.envelope_rcpts, (std::vector<std::string>{"a@example.com", "c@example.com"}));
}

TEST(Build, LongAsciiSubjectIsFoldedNotEncoded) {
  MessageContent c = basic();
  c.subject.clear();
  for (int i = 0; i < 40; ++i) c.subject += "word" + std::to_string(i) + " ";
  c.subject += "end";
  auto m = build_ok(c);
  expect_headers_folded(m.data);
  Part p = parse_entity(m.data);
  EXPECT_EQ(*p.header("Subject"), c.subject);  // unfolding gives it back exactly
}

TEST(Build, NoToButBccOnlyUsesUndisclosedRecipients) {
  MessageContent c = basic();
  c.to.clear();
  c.bcc = {{"x@example.com", ""}};
  auto m = build_ok(c);
  Part p = parse_entity(m.data);
  EXPECT_EQ(p.header("To"), "undisclosed-recipients:;");
  EXPECT_EQ(m.envelope_rcpts, (std::vector<std::string>{"x@example.com"}));
}

TEST(Build, RecipientsDeduplicatedDomainCaseInsensitiveLocalExact) {
  MessageContent c = basic();
  c.to = {{"a@Example.COM", ""}, {"A@example.com", ""}};
  c.cc = {{"a@example.com", ""}};
  c.bcc = {{"A@EXAMPLE.com", ""}, {"b@example.com", ""}};
  auto m = build_ok(c);
  EXPECT_EQ(m.envelope_rcpts,
            (std::vector<std::string>{"a@Example.COM", "A@example.com", "b@example.com"}));
}

TEST(Build, NonAsciiAddressesNeedSmtputf8AndAreRaw) {
  MessageContent c = basic();
  c.to = {
      {"j\xC3\xB6rg@b\xC3\xBC"
       "cher.de",
       "J\xC3\xB6rg"}};
  auto m = build_ok(c);
  EXPECT_TRUE(m.smtputf8);
  EXPECT_TRUE(m.eight_bit);
  EXPECT_NE(m.data.find("<j\xC3\xB6rg@b\xC3\xBC"
                        "cher.de>"),
            std::string::npos);
  Part p = parse_entity(m.data);
  EXPECT_EQ(decoded_list(p, "To"), (std::vector<Mailbox>{c.to[0]}));

  MessageContent r = basic();
  r.reply_to = Mailbox{"\xC3\xB6@example.com", ""};
  EXPECT_TRUE(build_ok(r).smtputf8);  // raw UTF-8 in a header needs SMTPUTF8 too
}

TEST(Build, TextAndHtmlAreMultipartAlternativeTextFirst) {
  MessageContent c = basic();
  c.body_text = "Line one\nLine two\rLine three";  // bare LF and CR
  c.body_html = "<p>caf\xC3\xA9 = coffee</p>\n";
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  Part p = parse_entity(m.data);
  EXPECT_EQ(content_type_of(p), "multipart/alternative");
  ASSERT_EQ(p.children.size(), 2u);
  EXPECT_EQ(content_type_of(p.children[0]), "text/plain");
  EXPECT_EQ(content_type_of(p.children[1]), "text/html");
  EXPECT_EQ(decoded_body(p.children[0]), "Line one\r\nLine two\r\nLine three\r\n");
  EXPECT_EQ(p.children[0].header("Content-Transfer-Encoding"), "7bit");
  EXPECT_EQ(p.children[1].header("Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_EQ(decoded_body(p.children[1]), crlf(*c.body_html));
}

// Random bodies (long lines, bare line ends, spaces before line ends, '=', UTF-8, with or
// without a final line end) decode back to their CRLF form, whatever encoding was chosen.
TEST(Build, RandomBodiesRoundTrip) {
  std::mt19937 rng(3);
  const std::string pieces[] = {"a",
                                " ",
                                "\t",
                                "=",
                                "\r\n",
                                "\n",
                                "\r",
                                ".",
                                "\xC3\xA9",
                                "\xD0\x9F\xD1\x80",
                                std::string(300, 'w')};
  std::uniform_int_distribution<size_t> pick(0, std::size(pieces) - 1);
  for (int round = 0; round < 200; ++round) {
    std::string body;
    for (int n = round % 25; n > 0; --n) body += pieces[pick(rng)];
    MessageContent c = basic();
    c.body_text = body;
    auto m = build_ok(c);
    expect_wire_clean(m.data);
    Part p = parse_entity(m.data);
    std::string want = crlf(body);
    if (!want.empty() && !want.ends_with("\r\n")) want += "\r\n";
    ASSERT_EQ(decoded_body(p), want)
        << round << " " << p.header("Content-Transfer-Encoding").value_or("");
  }
}

TEST(Build, TransferEncodingChosenByContent) {
  MessageContent c = basic();
  c.body_text = std::string(2000, 'a') + "\n" + "ends with space \nand tab\t\n=equals=";
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  Part p = parse_entity(m.data);
  EXPECT_EQ(p.header("Content-Transfer-Encoding"), "quoted-printable");
  EXPECT_EQ(decoded_body(p), crlf(*c.body_text));
  size_t pos = m.data.find("\r\n\r\n") + 4;  // QP lines are at most 76
  while (pos < m.data.size()) {
    size_t eol = m.data.find("\r\n", pos);
    EXPECT_LE(eol - pos, 76u);
    pos = eol + 2;
  }

  std::string cjk;
  for (int i = 0; i < 200; ++i) cjk += "\xE6\x97\xA5\xE6\x9C\xAC ";
  c.body_text = cjk;
  m = build_ok(c);
  p = parse_entity(m.data);
  EXPECT_EQ(p.header("Content-Transfer-Encoding"), "base64");
  EXPECT_EQ(decoded_body(p), crlf(cjk));
  EXPECT_FALSE(m.eight_bit);
}

TEST(Build, AttachmentsRoundTripIncludingBinaryAndUnicodeNames) {
  MessageContent c = basic();
  c.body_html = "<b>hi</b>";
  std::string all_bytes;
  for (int i = 0; i < 256; ++i) all_bytes.push_back(static_cast<char>(i));
  std::string long_name = "r\xC3\xA9sum\xC3\xA9 " + std::string(80, 'n') + " \xE2\x82\xAC.pdf";
  c.attachments = {
      {"data.bin", "", all_bytes + std::string(3000, '\0')},
      {long_name, "application/pdf", "%PDF-1.4\n..."},
      {"Quote \"me\".txt", "text/plain", "plain\r\n--=_mc_ boundary lookalike\r\n"},
      {"", "image/PNG", std::string("\x89PNG\r\n\x1a\n", 8)},
  };
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  // Part headers too: every line here is header or encoded body, so all fit in 78.
  for (size_t pos = 0; pos < m.data.size();) {
    size_t eol = m.data.find("\r\n", pos);
    EXPECT_LE(eol - pos, 78u) << m.data.substr(pos, eol - pos);
    pos = eol + 2;
  }
  Part p = parse_entity(m.data);
  EXPECT_EQ(content_type_of(p), "multipart/mixed");
  ASSERT_EQ(p.children.size(), 5u);
  EXPECT_EQ(content_type_of(p.children[0]), "multipart/alternative");
  ASSERT_EQ(p.children[0].children.size(), 2u);
  EXPECT_EQ(decoded_body(p.children[0].children[1]), "<b>hi</b>\r\n");

  const std::vector<std::string> types = {"application/octet-stream", "application/pdf",
                                          "text/plain", "image/png"};
  for (size_t i = 0; i < c.attachments.size(); ++i) {
    const Part& a = p.children[i + 1];
    SCOPED_TRACE(i);
    EXPECT_EQ(content_type_of(a), types[i]);
    EXPECT_EQ(decoded_body(a), c.attachments[i].data);
    auto disposition = a.header("Content-Disposition");
    ASSERT_TRUE(disposition);
    EXPECT_TRUE(disposition->starts_with("attachment"));
    auto filename = header_param(*disposition, "filename");
    if (c.attachments[i].filename.empty()) {
      EXPECT_FALSE(filename);
    } else {
      EXPECT_EQ(filename, c.attachments[i].filename);
      EXPECT_EQ(decode_2047(header_param(*a.header("Content-Type"), "name").value_or("")),
                c.attachments[i].filename);
    }
  }
}

struct BadInput {
  std::string field;
  MessageContent content;
};

std::vector<BadInput> bad_inputs() {
  std::vector<BadInput> v;
  auto add = [&](std::string field, auto mutate) {
    MessageContent c = basic();
    mutate(c);
    v.push_back({std::move(field), std::move(c)});
  };
  add("subject", [](MessageContent& c) { c.subject = "Hi\r\nBcc: evil@example.net"; });
  add("subject", [](MessageContent& c) { c.subject = "Hi\nthere"; });
  add("subject", [](MessageContent& c) { c.subject = "bad \xFF utf8"; });
  add("from.name", [](MessageContent& c) { c.from.name = "A\rB"; });
  add("from", [](MessageContent& c) { c.from.address = "not-an-address"; });
  add("from", [](MessageContent& c) { c.from.address = ""; });
  add("to[0].name", [](MessageContent& c) { c.to[0].name = "x\ny"; });
  add("to[0]", [](MessageContent& c) { c.to[0].address = "a@example.com\r\nRCPT TO:<x@y.z>"; });
  add("cc[0]", [](MessageContent& c) { c.cc = {{"bad@-host", ""}}; });
  add("bcc[0]", [](MessageContent& c) { c.bcc = {{"bad", ""}}; });
  add("reply_to", [](MessageContent& c) { c.reply_to = Mailbox{"x@", ""}; });
  add("attachments[0].filename", [](MessageContent& c) {
    c.attachments = {{"a\r\n.txt", "", "x"}};
  });
  add("attachments[0].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "text", "x"}};
  });
  add("attachments[0].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "te xt/plain", "x"}};
  });
  add("attachments[0].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "text/plain\r\nX-Evil: 1", "x"}};
  });
  add("attachments[1].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "", "x"}, {"b", "multipart/mixed", "x"}};
  });
  add("attachments[0].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "text/plain; charset", "x"}};
  });
  add("attachments[0].content_type", [](MessageContent& c) {
    c.attachments = {{"a", "text/plain; charset=\"utf-8", "x"}};
  });
  add("no recipient", [](MessageContent& c) { c.to.clear(); });
  return v;
}

TEST(Build, RejectsInjectionAndBadFieldsNamingTheField) {
  for (const auto& bad : bad_inputs()) {
    auto r = build_message(bad.content, {"id@x", kDate, "h"});
    ASSERT_FALSE(r.ok()) << bad.field;
    EXPECT_NE(r.error().message.find(bad.field), std::string::npos) << r.error().message;
  }
  auto r = build_message(basic(), {"<bad id>", kDate, "h"});
  EXPECT_FALSE(r.ok());
}

TEST(Build, GeneratesMessageIdAndBoundariesDiffer) {
  auto a = build_ok(basic(), {"", kDate, "mail.example"});
  EXPECT_TRUE(a.id.ends_with("@mail.example")) << a.id;
  EXPECT_NE(a.data.find("Message-ID: <" + a.id + ">\r\n"), std::string::npos);
  MessageContent c = basic();
  c.body_html = "<p/>";
  auto b1 = parse_entity(build_ok(c).data), b2 = parse_entity(build_ok(c).data);
  EXPECT_NE(header_param(*b1.header("Content-Type"), "boundary"),
            header_param(*b2.header("Content-Type"), "boundary"));
}

TEST(Build, AttachmentContentTypeKeepsParametersButNotName) {
  MessageContent c = basic();
  c.attachments = {
      {"notes.txt", "Text/Plain; Charset=\"utf-8\"; name=evil.exe; format=flowed", "hello"}};
  auto m = build_ok(c);
  Part p = parse_entity(m.data);
  ASSERT_EQ(p.children.size(), 2u);
  auto ct = p.children[1].header("Content-Type");
  ASSERT_TRUE(ct);
  EXPECT_EQ(content_type_of(p.children[1]), "text/plain");
  EXPECT_EQ(header_param(*ct, "charset"), "utf-8");
  EXPECT_EQ(header_param(*ct, "format"), "flowed");
  EXPECT_EQ(header_param(*ct, "name"), "notes.txt");
  EXPECT_EQ(ct->find("evil.exe"), std::string::npos);
}

// Lines of the top-level header block (up to the first empty line).
std::vector<std::string_view> header_lines(std::string_view data) {
  std::vector<std::string_view> lines;
  size_t end = data.find("\r\n\r\n");
  for (size_t pos = 0; pos < end;) {
    size_t eol = data.find("\r\n", pos);
    lines.push_back(data.substr(pos, eol - pos));
    pos = eol + 2;
  }
  return lines;
}

// Issue 7: a 5,000-letter from_name used to give a 5,006-octet From line.
TEST(Build, LongNamesAndSubjectAreFoldedOrEncodedAndDecodeBack) {
  MessageContent c = basic();
  c.from.name = std::string(5000, 'a');
  std::string accented;
  for (int i = 0; i < 700; ++i) accented += "\xC3\xA9";  // é, 2 octets each
  c.to = {{"a@example.com", std::string(1200, 'T') + " " + accented},
          {"b@example.com", "Plain Name"}};
  c.cc = {{"c@example.com", std::string(90, 'c') + " words after"}};
  c.reply_to = Mailbox{"r@example.com", "\xE2\x98\x83" + std::string(3000, 'r')};
  c.subject = std::string(5000, 's') + " \xE2\x9C\x93 tail";
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  expect_headers_folded(m.data);  // every header line <= 78, not only <= 998
  size_t from_lines = 0;
  for (std::string_view line : header_lines(m.data)) {
    if (line.starts_with("From:") || (from_lines > 0 && line.front() == ' ')) {
      ++from_lines;
    } else if (from_lines > 0) {
      break;
    }
  }
  EXPECT_GT(from_lines, 5000u / 75);  // several encoded words, one per line
  Part p = parse_entity(m.data);
  EXPECT_EQ(decoded_list(p, "From"), (std::vector<Mailbox>{c.from}));
  EXPECT_EQ(decoded_list(p, "To"), c.to);
  EXPECT_EQ(decoded_list(p, "Cc"), c.cc);
  EXPECT_EQ(decoded_list(p, "Reply-To"), (std::vector<Mailbox>{*c.reply_to}));
  EXPECT_EQ(decode_2047(*p.header("Subject")), c.subject);
}

TEST(Build, WordsUpToOneLineStayRawLongerOnesAreEncoded) {
  MessageContent c = basic();
  c.from.name = std::string(77, 'f');
  c.subject = std::string(77, 's') + " and " + std::string(20, 'x');
  auto m = build_ok(c);
  expect_headers_folded(m.data);
  EXPECT_NE(m.data.find("From:\r\n " + std::string(77, 'f') + "\r\n <sender@example.com>\r\n"),
            std::string::npos)
      << m.data;
  Part p = parse_entity(m.data);
  EXPECT_EQ(*p.header("Subject"), c.subject);  // raw, folded
  c.from.name += "f";
  c.subject = std::string(78, 's');
  m = build_ok(c);
  expect_headers_folded(m.data);
  EXPECT_EQ(m.data.find(std::string(78, 'f')), std::string::npos);
  p = parse_entity(m.data);
  EXPECT_TRUE(p.header("Subject")->starts_with("=?UTF-8?B?"));
  EXPECT_EQ(decode_2047(*p.header("Subject")), c.subject);
  EXPECT_EQ(decoded_list(p, "From"), (std::vector<Mailbox>{c.from}));
}

// RFC 2047 §5: no encoded word inside a quoted parameter; RFC 2231 instead.
TEST(Build, NonAsciiFilenameUsesRfc2231ForNameAndFilename) {
  MessageContent c = basic();
  std::string long_name;
  for (int i = 0; i < 60; ++i) long_name += "\xC3\xBC\xC3\xA9 ";  // 300 octets, 900 encoded
  long_name += ".pdf";
  std::string short_name = "\xC3\xA9t\xC3\xA9.txt";
  c.attachments = {{long_name, "application/pdf", "x"}, {short_name, "text/plain", "y"}};
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  for (size_t pos = 0; pos < m.data.size();) {
    size_t eol = m.data.find("\r\n", pos);
    EXPECT_LE(eol - pos, 78u) << m.data.substr(pos, eol - pos);
    pos = eol + 2;
  }
  EXPECT_EQ(m.data.find("=?"), std::string::npos) << "encoded word in a parameter";
  Part p = parse_entity(m.data);
  ASSERT_EQ(p.children.size(), 3u);
  const Part& first = p.children[1];
  const Part& second = p.children[2];
  EXPECT_NE(first.header("Content-Type")->find("name*0*=utf-8''"), std::string::npos);
  EXPECT_NE(first.header("Content-Disposition")->find("filename*0*=utf-8''"), std::string::npos);
  EXPECT_EQ(header_param(*first.header("Content-Type"), "name"), long_name);
  EXPECT_EQ(header_param(*first.header("Content-Disposition"), "filename"), long_name);
  EXPECT_NE(second.header("Content-Disposition")->find("filename*=utf-8''%C3%A9t%C3%A9.txt"),
            std::string::npos);
  EXPECT_EQ(header_param(*second.header("Content-Type"), "name"), short_name);
}

TEST(Build, ContentTypeThatCannotBeFoldedIsRefusedNamingTheField) {
  MessageContent c = basic();
  c.attachments = {{"a.txt", "text/plain; charset=" + std::string(1000, 'x'), "x"}};
  auto r = build_message(c, {"id@x", kDate, "h"});
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().message.starts_with("attachments[0].content_type: too long"))
      << r.error().message;
  c.attachments = {{"a.txt", "application/" + std::string(1000, 'y'), "x"}};
  r = build_message(c, {"id@x", kDate, "h"});
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().message.starts_with("attachments[0].content_type: too long"));
  // A long quoted value with spaces folds at them, and unfolds to the same value.
  std::string note;
  for (int i = 0; i < 300; ++i) note += "word" + std::to_string(i) + " ";
  note += "end";
  c.attachments = {{"a.txt", "text/plain; x-note=\"" + note + "\"", "x"}};
  auto m = build_ok(c);
  expect_wire_clean(m.data);
  Part p = parse_entity(m.data);
  EXPECT_EQ(header_param(*p.children[1].header("Content-Type"), "x-note"), note);
  // A token just under the limit is kept: valid, if long.
  c.attachments = {{"a.txt", "text/plain; charset=" + std::string(900, 'z'), "x"}};
  m = build_ok(c);
  expect_wire_clean(m.data);
}

}  // namespace
}  // namespace mailcar
