#include "http/api_handler.hpp"

#include <gtest/gtest.h>
#include <simdjson.h>

#include <optional>
#include <regex>
#include <string>

#include "http/fakes.hpp"
#include "mailcar/metrics.hpp"
#include "mailcar/text.hpp"

namespace mailcar::http {
namespace {

using mailcar::testing::FakePolicy;
using mailcar::testing::FakeTransport;

constexpr const char* kKey = "key-webapp-0123456789";
constexpr uint64_t kNow = 1'700'000'000'123;

struct Reply {
  HttpResponse response;
  // The element points at the parser's document, so the parser must not move with Reply.
  std::unique_ptr<simdjson::dom::parser> parser = std::make_unique<simdjson::dom::parser>();
  simdjson::dom::element json;

  int status() const { return response.status; }
  std::string str(const char* pointer) {
    std::string_view s;
    if (json.at_pointer(pointer).get_string().get(s) != simdjson::SUCCESS) return "<missing>";
    return std::string(s);
  }
  int64_t num(const char* pointer) {
    int64_t n = -1;
    if (json.at_pointer(pointer).get_int64().get(n) != simdjson::SUCCESS) return -999;
    return n;
  }
  bool is_null(const char* pointer) {
    simdjson::dom::element e;
    return json.at_pointer(pointer).get(e) == simdjson::SUCCESS && e.is_null();
  }
  std::string message() { return str("/error/message"); }
  std::string field() { return str("/error/context/field"); }
};

class ApiHandlerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    metrics::reset_for_tests();
    auto config = std::make_shared<Config>();
    ServiceConfig email;
    email.name = "email";
    email.from_name = "Example Support";
    email.from_email = "noreply@example.com";
    email.reply_to_name = "Support";
    email.reply_to_email = "support@example.com";
    config->services.push_back(email);
    ServiceConfig bare;
    bare.name = "bare";
    config->services.push_back(bare);
    config->credentials.push_back({"", "smtp-user", "pw", "legacy"});
    config->credentials.push_back({"other-key-aaaaaaaaaaa", "", "", "other"});
    config->credentials.push_back({kKey, "", "", "webapp"});
    config->limits.max_message_bytes = 200'000;
    config_ = config.get();
    policy_ = std::make_shared<FakePolicy>();
    transport_ = std::make_shared<FakeTransport>();
    runtime_ = std::make_shared<Runtime>();
    runtime_->config = config;
    runtime_->policy = policy_;
    runtime_->transports["email"] = transport_;
    runtime_->transports["bare"] = transport_;
    runtime_->hostname = "mailcar.test";
  }

  HttpRequest request(const std::string& method, const std::string& target, const std::string& body,
                      const std::string& headers) {
    std::string raw = method + " " + target + " HTTP/1.1\r\nHost: x\r\n" + headers +
                      "Content-Length: " + std::to_string(body.size()) + "\r\n\r\n" + body;
    HttpRequestParser parser(body_limit_for(config_->limits.max_message_bytes) * 2);
    auto out = parser.feed(raw);
    EXPECT_FALSE(out.error_status.has_value()) << out.error_reason;
    EXPECT_EQ(out.requests.size(), 1u);
    return out.requests.empty() ? HttpRequest{} : out.requests.front();
  }

  // Handles one request; a delivery that reached the transport is completed with `result`.
  Reply call(HttpRequest req, DeliveryResult result = {}) {
    std::optional<HttpResponse> got;
    handler_.handle(
        req, runtime_,
        [&got](HttpResponse r) {
          EXPECT_FALSE(got.has_value()) << "respond called twice";
          got = std::move(r);
        },
        "127.0.0.1:5555");
    if (!transport_->pending.empty()) {
      EXPECT_FALSE(got.has_value()) << "answered before the delivery completed";
      transport_->complete(std::move(result));
    }
    EXPECT_TRUE(got.has_value());
    Reply reply;
    if (got) reply.response = std::move(*got);
    if (reply.response.content_type == "application/json") {
      EXPECT_EQ(reply.parser->parse(reply.response.body).get(reply.json), simdjson::SUCCESS)
          << reply.response.body;
    }
    return reply;
  }

  Reply send(const std::string& body, const std::string& headers = "", DeliveryResult result = {},
             const std::string& target = "/api/v2/email") {
    return call(request("POST", target, body,
                        "Content-Type: application/json\r\nX-DreamFactory-API-Key: " +
                            std::string(kKey) + "\r\n" + headers),
                std::move(result));
  }

  const OutboundMessage& last_message() const { return transport_->messages.back(); }

  Config* config_ = nullptr;
  std::shared_ptr<FakePolicy> policy_;
  std::shared_ptr<FakeTransport> transport_;
  std::shared_ptr<Runtime> runtime_;
  ApiHandler handler_{[] { return kNow; }};
};

const std::string kMinimal = R"({"to":"a@example.com","subject":"Hi","body_text":"Hello"})";

// ---- routes ------------------------------------------------------------------------------

TEST_F(ApiHandlerTest, HealthReadyMetrics) {
  auto health = call(request("GET", "/health", "", ""));
  EXPECT_EQ(health.status(), 200);
  EXPECT_EQ(health.str("/status"), "ok");

  EXPECT_EQ(call(request("GET", "/ready", "", "")).status(), 200);
  std::optional<HttpResponse> not_ready;
  HttpRequest ready = request("GET", "/ready", "", "");
  handler_.handle(
      ready, nullptr, [&](HttpResponse r) { not_ready = std::move(r); }, "");
  ASSERT_TRUE(not_ready);
  EXPECT_EQ(not_ready->status, 503);

  metrics::count_rate_limited("probe-role");
  auto m = call(request("GET", "/metrics", "", ""));
  EXPECT_EQ(m.status(), 200);
  EXPECT_EQ(m.response.content_type.rfind("text/plain; version=0.0.4", 0), 0u);
  EXPECT_NE(m.response.body.find("probe-role"), std::string::npos);
}

TEST_F(ApiHandlerTest, UnknownPathsAre404AndWrongMethods405WithAllow) {
  for (const char* path : {"/", "/api/v2", "/api/v2/", "/api/v2/email/extra", "/nope"}) {
    auto r = call(request("GET", path, "", ""));
    EXPECT_EQ(r.status(), 404) << path;
    EXPECT_EQ(r.num("/error/code"), 404) << path;
    EXPECT_EQ(r.num("/error/status_code"), 404) << path;
  }
  auto unknown = send(kMinimal, "", {}, "/api/v2/nosuch");
  EXPECT_EQ(unknown.status(), 404);
  EXPECT_NE(unknown.message().find("nosuch"), std::string::npos);

  auto get_send = call(request("GET", "/api/v2/email", "", ""));
  EXPECT_EQ(get_send.status(), 405);
  EXPECT_EQ(get_send.response.header("Allow"), "POST");
  auto post_health = call(request("POST", "/health", "", ""));
  EXPECT_EQ(post_health.status(), 405);
  EXPECT_EQ(post_health.response.header("Allow"), "GET");
  EXPECT_EQ(call(request("DELETE", "/metrics", "", "")).status(), 405);
  // A trailing slash on the service is accepted.
  EXPECT_EQ(send(kMinimal, "", {}, "/api/v2/email/").status(), 200);
}

// ---- success -----------------------------------------------------------------------------

TEST_F(ApiHandlerTest, SendsAndAnswersCountAndId) {
  auto r = send(R"({"to":[{"email":"a@example.com","name":"A"},"b@example.com"],
                    "cc":{"email":"c@example.com"},"bcc":[{"email":"d@example.com"}],
                    "subject":"Welcome","body_text":"Hello","body_html":"<p>Hello</p>",
                    "unknown_field":{"ignored":true}})");
  ASSERT_EQ(r.status(), 200) << r.response.body;
  EXPECT_EQ(r.num("/count"), 4);
  const auto& m = last_message();
  EXPECT_EQ(r.str("/id"), m.id);
  EXPECT_TRUE(std::regex_match(m.id, std::regex("[A-Za-z0-9.@_-]+"))) << m.id;
  EXPECT_EQ(m.envelope_from, "noreply@example.com");
  EXPECT_EQ(m.envelope_rcpts, (std::vector<std::string>{"a@example.com", "b@example.com",
                                                        "c@example.com", "d@example.com"}));
  EXPECT_EQ(m.data.find("d@example.com"), std::string::npos) << "Bcc leaked into the headers";
  EXPECT_NE(m.data.find("c@example.com"), std::string::npos);
  ASSERT_EQ(policy_->admitted.size(), 1u);
  const auto& p = policy_->admitted[0];
  EXPECT_EQ(p.role, "webapp");
  EXPECT_EQ(p.service, "email");
  EXPECT_EQ(p.envelope_from, "noreply@example.com");
  EXPECT_EQ(p.header_from, std::vector<std::string>{"noreply@example.com"});
  EXPECT_EQ(p.recipients, 4u);
  EXPECT_EQ(policy_->last_now_ms, kNow);
  auto rendered = metrics::render_prometheus();
  EXPECT_NE(rendered.find("outcome=\"sent\""), std::string::npos) << rendered;
}

TEST_F(ApiHandlerTest, EveryRecipientForm) {
  struct Case {
    const char* json;
    std::vector<std::string> rcpts;
  };
  for (const Case& c : {
           Case{R"("to":"a@x.org")", {"a@x.org"}},
           Case{R"("to":{"email":"a@x.org","name":"A"})", {"a@x.org"}},
           Case{R"("to":{"email":"a@x.org","name":null})", {"a@x.org"}},
           Case{R"("to":["a@x.org",{"email":"b@x.org"}])", {"a@x.org", "b@x.org"}},
           Case{R"("cc":"c@x.org")", {"c@x.org"}},
           Case{R"("bcc":["d@x.org"],"to":null)", {"d@x.org"}},
           Case{R"("to":"  a@x.org ")", {"a@x.org"}},
       }) {
    auto r = send(std::string("{") + c.json + R"(,"body_text":"x"})");
    ASSERT_EQ(r.status(), 200) << c.json << " " << r.response.body;
    EXPECT_EQ(last_message().envelope_rcpts, c.rcpts) << c.json;
  }
  auto named = send(R"({"to":{"email":"a@x.org","name":"Alice Example"},"body_text":"x"})");
  ASSERT_EQ(named.status(), 200);
  EXPECT_NE(last_message().data.find("Alice Example <a@x.org>"), std::string::npos);
}

TEST_F(ApiHandlerTest, AttachmentsAreDecoded) {
  auto r = send(R"({"to":"a@x.org","body_text":"x","attachments":[
      {"name":"a.txt","content":")" +
                text::base64_encode("attachment-bytes-1") + R"(",
       "content_type":"text/plain"},
      {"name":"b.bin","content":")" +
                text::base64_encode("zz") + R"("}]})");
  ASSERT_EQ(r.status(), 200) << r.response.body;
  const auto& data = last_message().data;
  EXPECT_NE(data.find("a.txt"), std::string::npos);
  EXPECT_NE(data.find("b.bin"), std::string::npos);
  EXPECT_NE(data.find(text::base64_encode("attachment-bytes-1")), std::string::npos);
  EXPECT_NE(data.find("application/octet-stream"), std::string::npos);
}

// ---- templates ---------------------------------------------------------------------------

TEST(ExpandTemplate, OnePassUnknownStay) {
  std::map<std::string, std::string, std::less<>> values{{"a", "1"}, {"b", "{a}"}, {"", "empty"}};
  auto lookup = [&](std::string_view k) -> const std::string* {
    auto it = values.find(k);
    return it == values.end() ? nullptr : &it->second;
  };
  auto expand = [&](std::string_view t) { return expand_template(t, lookup, 1000).value(); };
  EXPECT_EQ(expand("x{a}y"), "x1y");
  EXPECT_EQ(expand("{b}"), "{a}");  // not re-expanded
  EXPECT_EQ(expand("{c} {a}"), "{c} 1");
  EXPECT_EQ(expand("{{a}}"), "{1}");
  EXPECT_EQ(expand("{a"), "{a");
  EXPECT_EQ(expand("a}{"), "a}{");
  EXPECT_EQ(expand("{}"), "empty");
  EXPECT_EQ(expand(""), "");
}

TEST(ExpandTemplate, StopsAsSoonAsTheOutputPassesTheLimit) {
  const std::string big(1000, 'v');
  size_t lookups = 0;
  auto lookup = [&](std::string_view k) -> const std::string* {
    ++lookups;
    return k == "a" ? &big : nullptr;
  };
  std::string repeated;
  for (int i = 0; i < 4000; ++i) repeated += "{a}";
  EXPECT_EQ(expand_template(repeated, lookup, 10'000), std::nullopt);
  EXPECT_LE(lookups, 11u);  // gave up at the 11th value, not after all 4,000
  // Exactly at the limit is fine; one byte more is not, wherever that byte comes from.
  EXPECT_EQ(expand_template("{a}{a}", lookup, 2000)->size(), 2000u);
  EXPECT_EQ(expand_template("{a}{a}x", lookup, 2000), std::nullopt);
  EXPECT_EQ(expand_template("x{a}{a}", lookup, 2000), std::nullopt);
  EXPECT_EQ(expand_template("{a}{a}{", lookup, 2000), std::nullopt);
  EXPECT_EQ(expand_template("{b}", lookup, 2), std::nullopt);  // kept text counts too
  EXPECT_EQ(expand_template("{b}", lookup, 3), "{b}");
  EXPECT_EQ(expand_template("", lookup, 0), "");
}

TEST_F(ApiHandlerTest, TemplatesWithFallbackAndNoReexpansion) {
  auto r = send(R"({"to":"a@x.org","first_name":"Top","city":"Paris","api_key":")" +
                std::string(kKey) + R"(",
      "subject":"Welcome, {first_name} from {city}! {missing}",
      "body_text":"Hi {first_name} n={n} b={b} f={f} z={z} key={api_key}",
      "body_html":"<p>{first_name}</p>",
      "template_data":{"first_name":"John {city}","n":42,"b":true,"f":1.5,"z":null}})");
  ASSERT_EQ(r.status(), 200) << r.response.body;
  const auto& data = last_message().data;
  EXPECT_NE(data.find("Subject: Welcome, John {city} from Paris! {missing}"), std::string::npos)
      << data;
  EXPECT_NE(data.find("Hi John {city} n=42 b=true f=1.5 z= key={api_key}"), std::string::npos)
      << data;
  EXPECT_EQ(data.find(kKey), std::string::npos) << "the API key must never reach a message";
  EXPECT_NE(data.find("<p>John {city}</p>"), std::string::npos);
}

// The request's own string fields are template values too (read from the fields, not
// copied): as sent, an empty one empty, one not sent not a value at all.
TEST_F(ApiHandlerTest, OwnStringFieldsAreTemplateValues) {
  auto r = send(R"({"to":"a@x.org","from_name":"Ann","from_email":"ann@x.org","subject":"",
      "subject":"S {from_name}","body_html":"",
      "body_text":"{from_name} <{from_email}> [{subject}] [{body_html}] {reply_to_name} {to}"})");
  ASSERT_EQ(r.status(), 200) << r.response.body;
  const auto& data = last_message().data;
  EXPECT_NE(data.find("Subject: S Ann"), std::string::npos) << data;
  EXPECT_NE(data.find("Ann <ann@x.org> [S {from_name}] [] {reply_to_name} a@x.org"),
            std::string::npos)
      << data;
}

TEST_F(ApiHandlerTest, SubjectWithCrLfAfterSubstitutionIs400) {
  auto r = send(R"({"to":"a@x.org","body_text":"x","subject":"Hi {n}",
                    "template_data":{"n":"a\r\nBcc: victim@x.org"}})");
  EXPECT_EQ(r.status(), 400);
  EXPECT_EQ(r.field(), "subject");
  EXPECT_TRUE(transport_->messages.empty());
  auto direct = send(R"({"to":"a@x.org","body_text":"x","subject":"a\nb"})");
  EXPECT_EQ(direct.status(), 400);
  EXPECT_EQ(direct.field(), "subject");
}

// ---- sender defaults ---------------------------------------------------------------------

TEST_F(ApiHandlerTest, SenderDefaultsPairRule) {
  ASSERT_EQ(send(kMinimal).status(), 200);
  EXPECT_NE(last_message().data.find("From: Example Support <noreply@example.com>"),
            std::string::npos);
  EXPECT_NE(last_message().data.find("Reply-To: Support <support@example.com>"), std::string::npos);

  // A given from_email without from_name has no display name; reply_to the same.
  ASSERT_EQ(send(R"({"to":"a@x.org","body_text":"x","from_email":"me@example.com",
                     "reply_to_email":"r@example.com"})")
                .status(),
            200);
  EXPECT_NE(last_message().data.find("From: me@example.com\r\n"), std::string::npos);
  EXPECT_NE(last_message().data.find("Reply-To: r@example.com\r\n"), std::string::npos);
  EXPECT_EQ(last_message().envelope_from, "me@example.com");
  EXPECT_EQ(policy_->admitted.back().envelope_from, "me@example.com");

  // A given name with the default address keeps the given name.
  ASSERT_EQ(send(R"({"to":"a@x.org","body_text":"x","from_name":"Given",
                     "reply_to_name":"RGiven"})")
                .status(),
            200);
  EXPECT_NE(last_message().data.find("From: Given <noreply@example.com>"), std::string::npos);
  EXPECT_NE(last_message().data.find("Reply-To: RGiven <support@example.com>"), std::string::npos);

  // A service without defaults: from_email is required, no Reply-To.
  auto none = send(kMinimal, "", {}, "/api/v2/bare");
  EXPECT_EQ(none.status(), 400);
  EXPECT_EQ(none.field(), "from_email");
  ASSERT_EQ(send(R"({"to":"a@x.org","body_text":"x","from_email":"me@example.com"})", "", {},
                 "/api/v2/bare")
                .status(),
            200);
  EXPECT_EQ(last_message().data.find("Reply-To:"), std::string::npos);
}

// ---- validation --------------------------------------------------------------------------

TEST_F(ApiHandlerTest, WrongTypesName400TheField) {
  struct Case {
    const char* json;
    const char* field;
  };
  for (const Case& c : {
           Case{R"({"to":5,"body_text":"x"})", "to"},
           Case{R"({"to":[["a@x.org"]],"body_text":"x"})", "to"},
           Case{R"({"to":{"name":"no email"},"body_text":"x"})", "to"},
           Case{R"({"to":"a@x.org","cc":true,"body_text":"x"})", "cc"},
           Case{R"({"to":"a@x.org","bcc":{"email":1},"body_text":"x"})", "bcc"},
           Case{R"({"to":{"email":"a@x.org","name":7},"body_text":"x"})", "to"},
           Case{R"({"to":"a@x.org","subject":1,"body_text":"x"})", "subject"},
           Case{R"({"to":"a@x.org","body_text":["x"]})", "body_text"},
           Case{R"({"to":"a@x.org","body_text":"x","body_html":{}})", "body_html"},
           Case{R"({"to":"a@x.org","body_text":"x","from_name":2})", "from_name"},
           Case{R"({"to":"a@x.org","body_text":"x","from_email":false})", "from_email"},
           Case{R"({"to":"a@x.org","body_text":"x","reply_to_name":[]})", "reply_to_name"},
           Case{R"({"to":"a@x.org","body_text":"x","reply_to_email":3})", "reply_to_email"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":{}})", "attachments"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":["x"]})", "attachments"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":[{"content":""}]})",
                "attachments"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":[{"name":"a"}]})", "attachments"},
           Case{R"({"to":"a@x.org","body_text":"x","template_data":[]})", "template_data"},
           Case{R"({"to":"a@x.org","body_text":"x","template_data":{"a":{}}})", "template_data"},
           Case{R"({"to":"a@x.org","body_text":"x","template_data":{"a":[1]}})", "template_data"},
       }) {
    auto r = send(c.json);
    EXPECT_EQ(r.status(), 400) << c.json;
    EXPECT_EQ(r.field(), c.field) << c.json << " " << r.response.body;
  }
  EXPECT_TRUE(transport_->messages.empty());
  EXPECT_TRUE(policy_->admitted.empty());
}

TEST_F(ApiHandlerTest, BadBase64NamesTheAttachment) {
  auto r = send(R"({"to":"a@x.org","body_text":"x","attachments":[
                    {"name":"ok.txt","content":"b2s="},{"name":"report.pdf","content":"@@@"}]})");
  EXPECT_EQ(r.status(), 400);
  EXPECT_EQ(r.field(), "attachments");
  EXPECT_NE(r.message().find("report.pdf"), std::string::npos) << r.message();
  EXPECT_NE(r.message().find("attachments[1]"), std::string::npos) << r.message();
}

TEST_F(ApiHandlerTest, ContentValidation) {
  auto no_rcpt = send(R"({"subject":"x","body_text":"x","to":[]})");
  EXPECT_EQ(no_rcpt.status(), 400);
  EXPECT_EQ(no_rcpt.field(), "to");
  auto no_body = send(R"({"to":"a@x.org","subject":"x"})");
  EXPECT_EQ(no_body.status(), 400);
  EXPECT_EQ(no_body.field(), "body_text");
  EXPECT_EQ(send(R"({"to":"a@x.org","body_text":""})").status(), 400);
  EXPECT_EQ(send(R"({"to":"a@x.org","body_html":"<p>only html</p>"})").status(), 200);

  auto bad_cc = send(R"({"to":"a@x.org","cc":["ok@x.org","not an address"],"body_text":"x"})");
  EXPECT_EQ(bad_cc.status(), 400);
  EXPECT_EQ(bad_cc.field(), "cc");
  EXPECT_NE(bad_cc.message().find("cc"), std::string::npos);
  auto bad_from = send(R"({"to":"a@x.org","from_email":"nobody","body_text":"x"})");
  EXPECT_EQ(bad_from.status(), 400);
  EXPECT_EQ(bad_from.field(), "from_email");
  auto bad_reply = send(R"({"to":"a@x.org","reply_to_email":"x@","body_text":"x"})");
  EXPECT_EQ(bad_reply.status(), 400);
  EXPECT_EQ(bad_reply.field(), "reply_to_email");

  struct Case {
    const char* json;
    const char* field;
  };
  for (const Case& c : {
           Case{R"({"to":{"email":"a@x.org","name":"A\r\nBcc: v@x.org"},"body_text":"x"})", "to"},
           Case{R"({"to":"a@x.org\r\nBcc: v@x.org","body_text":"x"})", "to"},
           Case{R"({"to":"a@x.org","from_name":"F\nX","body_text":"x"})", "from_name"},
           Case{R"({"to":"a@x.org","from_email":"f@x.org\n","body_text":"x"})", "from_email"},
           Case{R"({"to":"a@x.org","reply_to_name":"R\r","body_text":"x"})", "reply_to_name"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":[
                  {"name":"a\r\nb.txt","content":"b2s="}]})",
                "attachments"},
           Case{R"({"to":"a@x.org","body_text":"x","attachments":[
                  {"name":"a.txt","content":"b2s=","content_type":"text/plain\r\nX: y"}]})",
                "attachments"},
       }) {
    auto r = send(c.json);
    EXPECT_EQ(r.status(), 400) << c.json;
    EXPECT_EQ(r.field(), c.field) << c.json << " " << r.response.body;
  }
  EXPECT_EQ(transport_->messages.size(), 1u);  // only the html-only one
}

TEST_F(ApiHandlerTest, MalformedJsonAndNonObjectAre400) {
  for (const char* body : {"{", "{\"to\":}", "[1,2]", "\"str\"", "", "{\"a\":\"\xff\"}"}) {
    auto r = send(body);
    EXPECT_EQ(r.status(), 400) << body;
    EXPECT_EQ(r.num("/error/code"), 400);
    EXPECT_TRUE(r.is_null("/error/context")) << r.response.body;
  }
}

// ---- authentication ----------------------------------------------------------------------

TEST_F(ApiHandlerTest, AuthByEveryMethod) {
  const std::string ct = "Content-Type: application/json\r\n";
  auto ok = [&](const HttpRequest& req) { return call(req).status(); };
  EXPECT_EQ(ok(request("POST", std::string("/api/v2/email?api_key=") + kKey, kMinimal, ct)), 200);
  EXPECT_EQ(ok(request("POST", "/api/v2/email", kMinimal,
                       ct + "X-DreamFactory-API-Key: " + kKey + "\r\n")),
            200);
  std::string with_body_key =
      R"({"api_key":")" + std::string(kKey) + R"(","to":"a@x.org","body_text":"x"})";
  EXPECT_EQ(ok(request("POST", "/api/v2/email", with_body_key, ct)), 200);
  EXPECT_EQ(
      ok(request("POST", "/api/v2/email", kMinimal, ct + "Authorization: Bearer " + kKey + "\r\n")),
      200);
  EXPECT_EQ(ok(request("POST", "/api/v2/email", kMinimal,
                       ct + "Authorization: bearer  " + kKey + " \r\n")),
            200);
  // The role comes from the matching credential (the second API key here).
  EXPECT_EQ(ok(request("POST", "/api/v2/email?api_key=other-key-aaaaaaaaaaa", kMinimal, ct)), 200);
  EXPECT_EQ(policy_->admitted.back().role, "other");
  EXPECT_EQ(policy_->admitted.front().role, "webapp");
}

TEST_F(ApiHandlerTest, AuthFailures) {
  const std::string ct = "Content-Type: application/json\r\n";
  auto status = [&](const std::string& target, const std::string& body,
                    const std::string& headers) {
    auto r = call(request("POST", target, body, ct + headers));
    return r.status();
  };
  EXPECT_EQ(status("/api/v2/email", kMinimal, ""), 401);
  EXPECT_EQ(status("/api/v2/email?api_key=wrong", kMinimal, ""), 401);
  // A key sharing a prefix with a real one, or a prefix of it, is not it.
  EXPECT_EQ(status(std::string("/api/v2/email?api_key=") + kKey + "x", kMinimal, ""), 401);
  EXPECT_EQ(status("/api/v2/email?api_key=key-webapp", kMinimal, ""), 401);
  // SMTP credentials have no API key; an empty key matches nothing.
  EXPECT_EQ(status("/api/v2/email?api_key=", kMinimal, ""), 401);
  EXPECT_EQ(status("/api/v2/email", kMinimal, "X-DreamFactory-API-Key: \r\n"), 401);
  EXPECT_EQ(status("/api/v2/email", kMinimal, "Authorization: Basic Zm9vOmJhcg==\r\n"), 401);
  EXPECT_EQ(status("/api/v2/email", kMinimal, "Authorization: Bearer \r\n"), 401);
  // First found wins: a wrong query key is not rescued by a right header key.
  EXPECT_EQ(status("/api/v2/email?api_key=wrong", kMinimal,
                   std::string("X-DreamFactory-API-Key: ") + kKey + "\r\n"),
            401);
  EXPECT_EQ(status("/api/v2/email", kMinimal,
                   std::string("X-DreamFactory-API-Key: wrong\r\nAuthorization: Bearer ") + kKey +
                       "\r\n"),
            401);
  std::string wrong_body_key = R"({"api_key":"wrong","to":"a@x.org","body_text":"x"})";
  EXPECT_EQ(status("/api/v2/email", wrong_body_key,
                   std::string("Authorization: Bearer ") + kKey + "\r\n"),
            401);
  auto r = call(request("POST", "/api/v2/email", kMinimal, ct));
  EXPECT_EQ(r.num("/error/code"), 401);
  EXPECT_EQ(r.num("/error/status_code"), 401);
  EXPECT_TRUE(policy_->admitted.empty());
}

TEST_F(ApiHandlerTest, AuthComparesEveryCredential) {
  // Many keys of equal length; only the last matches. All are compared (no early exit), and
  // the first match decides the role.
  Config& config = *config_;
  config.credentials.clear();
  for (int i = 0; i < 50; ++i) {
    config.credentials.push_back(
        {"k" + std::string(20, static_cast<char>('a' + i % 26)) + std::to_string(i + 10), "", "",
         "r" + std::to_string(i)});
  }
  std::string last = config.credentials.back().api_key;
  auto r = call(request("POST", "/api/v2/email?api_key=" + last, kMinimal,
                        "Content-Type: application/json\r\n"));
  EXPECT_EQ(r.status(), 200);
  EXPECT_EQ(policy_->admitted.back().role, "r49");
}

// ---- precedence --------------------------------------------------------------------------

TEST_F(ApiHandlerTest, PrecedenceOrder) {
  const std::string json = "Content-Type: application/json\r\n";
  const std::string key = std::string("X-DreamFactory-API-Key: ") + kKey + "\r\n";
  const std::string bad_everything = R"({"to":"not-an-address","subject":"a\nb"})";
  // 404 before 401.
  EXPECT_EQ(call(request("POST", "/api/v2/nosuch", "x", "Content-Type: text/plain\r\n")).status(),
            404);
  // 405 before 401.
  EXPECT_EQ(call(request("PUT", "/api/v2/email", "x", "Content-Type: text/plain\r\n")).status(),
            405);
  // 401 before 415: no key anywhere and not JSON.
  EXPECT_EQ(call(request("POST", "/api/v2/email", "x", "Content-Type: text/plain\r\n")).status(),
            401);
  // A body key inside a non-JSON body does not count: 401, not 415.
  std::string body_key = R"({"api_key":")" + std::string(kKey) + R"(","to":"a@x.org"})";
  EXPECT_EQ(
      call(request("POST", "/api/v2/email", body_key, "Content-Type: text/plain\r\n")).status(),
      401);
  // 401 before 400: the key would be in a body that does not parse.
  EXPECT_EQ(
      call(request("POST", "/api/v2/email", "{\"api_key\":\"" + std::string(kKey) + "\",", json))
          .status(),
      401);
  // 415 before 400 and 413.
  EXPECT_EQ(
      call(request("POST", "/api/v2/email", "{", "Content-Type: text/plain\r\n" + key)).status(),
      415);
  EXPECT_EQ(call(request("POST", "/api/v2/email", "", key)).status(), 415);
  auto oversized = std::string(body_limit_for(config_->limits.max_message_bytes) + 1, '{');
  EXPECT_EQ(call(request("POST", "/api/v2/email", oversized, "Content-Type: text/xml\r\n" + key))
                .status(),
            415);
  // 413 before 400 (body over the limit and malformed).
  EXPECT_EQ(call(request("POST", "/api/v2/email", oversized, json + key)).status(), 413);
  // 400 before 403 and 429: policy is not even asked.
  policy_->next.verdict = Verdict::SenderNotAllowed;
  EXPECT_EQ(call(request("POST", "/api/v2/email", bad_everything, json + key)).status(), 400);
  EXPECT_TRUE(policy_->admitted.empty());
  // Built message over the limit: 413, policy not asked (nothing consumed).
  std::string big(config_->limits.max_message_bytes, 'a');
  auto too_big = call(request("POST", "/api/v2/email",
                              R"({"to":"a@x.org","body_text":")" + big + R"("})", json + key));
  EXPECT_EQ(too_big.status(), 413);
  EXPECT_TRUE(policy_->admitted.empty());
  EXPECT_TRUE(transport_->messages.empty());
  // An attachment that alone is over the limit: 413 even though an address is bad too.
  std::string huge = text::base64_encode(std::string(config_->limits.max_message_bytes + 1, 'z'));
  EXPECT_EQ(call(request("POST", "/api/v2/email",
                         R"({"to":"bad address","body_text":"x","attachments":[{"name":"a",)"
                         R"("content":")" +
                             huge + R"("}]})",
                         json + key))
                .status(),
            413);
  EXPECT_TRUE(policy_->admitted.empty());
  // Charset parameters are fine.
  policy_->next = {};
  EXPECT_EQ(call(request("POST", "/api/v2/email", kMinimal,
                         "Content-Type: Application/JSON; charset=utf-8\r\n" + key))
                .status(),
            200);
}

// ---- policy ------------------------------------------------------------------------------

TEST_F(ApiHandlerTest, PolicyRefusalsAre403WithTheReason) {
  for (Verdict v : {Verdict::UnknownRole, Verdict::ServiceNotAllowed, Verdict::SenderNotAllowed,
                    Verdict::TooManyRecipients}) {
    policy_->next = {};
    policy_->next.verdict = v;
    policy_->next.reason = "rule " + std::to_string(static_cast<int>(v)) + " refused";
    auto r = send(kMinimal);
    EXPECT_EQ(r.status(), 403);
    EXPECT_EQ(r.message(), policy_->next.reason);
    EXPECT_EQ(r.num("/error/status_code"), 403);
  }
  EXPECT_TRUE(transport_->messages.empty());
}

TEST_F(ApiHandlerTest, RateLimitedIs429WithHeaders) {
  policy_->next.verdict = Verdict::RateLimited;
  policy_->next.limit_text = "50/second";
  policy_->next.limit = 50;
  policy_->next.remaining = 3;
  policy_->next.retry_after_ms = 1500;
  policy_->next.reset_ms = 10'001;
  auto r = send(kMinimal);
  EXPECT_EQ(r.status(), 429);
  EXPECT_EQ(r.message(), "API limit(s) exceeded.");
  EXPECT_EQ(r.response.header("Retry-After"), "2");
  EXPECT_EQ(r.response.header("X-RateLimit-Limit"), "50");
  EXPECT_EQ(r.response.header("X-RateLimit-Remaining"), "3");
  EXPECT_EQ(r.response.header("X-RateLimit-Reset"), "11");
  EXPECT_TRUE(transport_->messages.empty());

  policy_->next.retry_after_ms = 0;  // never "Retry-After: 0"
  EXPECT_EQ(send(kMinimal).response.header("Retry-After"), "1");
  policy_->next.retry_after_ms = 3000;
  EXPECT_EQ(send(kMinimal).response.header("Retry-After"), "3");
  EXPECT_NE(metrics::render_prometheus().find("mailcar_rate_limited_total"), std::string::npos);
}

// ---- delivery outcomes -------------------------------------------------------------------

TEST_F(ApiHandlerTest, DeliveryFailuresAre500WithContext) {
  struct Case {
    DeliveryStatus status;
    const char* message;
    std::optional<int> code;
    bool retryable;
  };
  for (const Case& c : {
           Case{DeliveryStatus::ConnectionRefused, "Connection refused", std::nullopt, true},
           Case{DeliveryStatus::ConnectionTimedOut, "Connection timed out", std::nullopt, true},
           Case{DeliveryStatus::CertificateError, "Certificate error", std::nullopt, false},
           Case{DeliveryStatus::AuthenticationFailed, "Authentication failed", 535, false},
           Case{DeliveryStatus::TlsUnavailable, "STARTTLS not offered", 250, false},
           Case{DeliveryStatus::Rejected, "5.7.1 relay denied", 550, false},
           Case{DeliveryStatus::Rejected, "4.2.1 try later", 451, true},
           Case{DeliveryStatus::ProtocolError, "Upstream protocol error", std::nullopt, true},
       }) {
    DeliveryResult result;
    result.status = c.status;
    result.message = c.message;
    result.smtp_code = c.code;
    if (c.code) result.smtp_reply = std::to_string(*c.code) + " reply text";
    result.retryable = c.retryable;
    auto r = send(kMinimal, "", result);
    EXPECT_EQ(r.status(), 500) << c.message;
    EXPECT_EQ(r.num("/error/code"), 500);
    EXPECT_EQ(r.message(), c.message);
    if (c.code) {
      EXPECT_EQ(r.num("/error/context/smtp_code"), *c.code);
      EXPECT_EQ(r.str("/error/context/smtp_reply"), result.smtp_reply);
    } else {
      EXPECT_TRUE(r.is_null("/error/context/smtp_code")) << r.response.body;
      EXPECT_TRUE(r.is_null("/error/context/smtp_reply")) << r.response.body;
    }
    bool retryable = !c.retryable;
    ASSERT_EQ(r.json.at_pointer("/error/context/retryable").get_bool().get(retryable),
              simdjson::SUCCESS);
    EXPECT_EQ(retryable, c.retryable) << c.message;
  }
  DeliveryResult stopping;
  stopping.status = DeliveryStatus::ShuttingDown;
  stopping.retryable = true;
  EXPECT_EQ(send(kMinimal, "", stopping).status(), 503);
}

TEST_F(ApiHandlerTest, PartialRejectionIs200WithRejected) {
  DeliveryResult result;
  result.accepted = {"a@x.org"};
  result.rejected = {{"b@x.org", 550, "550 5.1.1 no such user"}, {"c@x.org", 452, "452 full"}};
  auto r = send(R"({"to":["a@x.org","b@x.org","c@x.org"],"body_text":"x"})", "", result);
  ASSERT_EQ(r.status(), 200) << r.response.body;
  EXPECT_EQ(r.num("/count"), 1);
  EXPECT_EQ(r.str("/rejected/0/email"), "b@x.org");
  EXPECT_EQ(r.num("/rejected/0/smtp_code"), 550);
  EXPECT_EQ(r.str("/rejected/0/smtp_reply"), "550 5.1.1 no such user");
  EXPECT_EQ(r.str("/rejected/1/email"), "c@x.org");
  EXPECT_EQ(r.num("/rejected/1/smtp_code"), 452);
  // As a failure's context says (issue 13): a 4xx may pass later, a 5xx will not.
  bool retryable = true;
  ASSERT_EQ(r.json.at_pointer("/rejected/0/retryable").get_bool().get(retryable),
            simdjson::SUCCESS);
  EXPECT_FALSE(retryable);
  ASSERT_EQ(r.json.at_pointer("/rejected/1/retryable").get_bool().get(retryable),
            simdjson::SUCCESS);
  EXPECT_TRUE(retryable);
  // No "rejected" member when everyone accepted.
  auto all = send(kMinimal);
  simdjson::dom::element e;
  EXPECT_NE(all.json.at_key("rejected").get(e), simdjson::SUCCESS);
}

TEST_F(ApiHandlerTest, SentWithNobodyAcceptedIs500) {
  DeliveryResult result;
  result.rejected = {{"a@example.com", 550, "550 no"}};
  auto r = send(kMinimal, "", result);
  EXPECT_EQ(r.status(), 500);
  EXPECT_EQ(r.num("/error/context/smtp_code"), 550);
}

TEST_F(ApiHandlerTest, HandlerMayGoAwayWhileADeliveryIsInFlight) {
  std::optional<HttpResponse> got;
  {
    ApiHandler temporary([] { return kNow; });
    HttpRequest send = request(
        "POST", "/api/v2/email", kMinimal,
        std::string("Content-Type: application/json\r\nX-DreamFactory-API-Key: ") + kKey + "\r\n");
    temporary.handle(
        send, runtime_, [&](HttpResponse r) { got = std::move(r); }, "peer");
  }
  runtime_.reset();  // the callback keeps its own snapshot
  ASSERT_EQ(transport_->pending.size(), 1u);
  EXPECT_FALSE(got);
  transport_->complete({});
  ASSERT_TRUE(got);
  EXPECT_EQ(got->status, 200);
}

}  // namespace
}  // namespace mailcar::http
