// OAuth2 (issue 9): SASL initial responses, the session's token flow, token endpoint answers
// and the persisted refresh token.
#include <gtest/gtest.h>

#include <string>
#include <vector>

#include "mailcar/oauth2.hpp"
#include "mailcar/smtp_client.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

using Kind = SmtpClientEvent::Kind;
using State = SmtpClientSession::State;

bool has_event(const SmtpClientOutput& out, Kind kind) {
  for (const auto& e : out.events) {
    if (e.kind == kind) return true;
  }
  return false;
}

const SmtpClientEvent* find_event(const SmtpClientOutput& out, Kind kind) {
  for (const auto& e : out.events) {
    if (e.kind == kind) return &e;
  }
  return nullptr;
}

TEST(Sasl, Xoauth2MatchesGooglesDocumentedExample) {
  EXPECT_EQ(xoauth2_initial_response("someuser@example.com",
                                     "ya29.vF9dft4qmTc2Nvb3RlckBhdHRhdmlzdGEuY29tCg"),
            "dXNlcj1zb21ldXNlckBleGFtcGxlLmNvbQFhdXRoPUJlYXJlciB5YTI5LnZGOWRmdDRxbVRjMk52YjNSbGNr"
            "QmhkSFJoZG1semRHRXVZMjl0Q2cBAQ==");
}

TEST(Sasl, OauthbearerMatchesRfc7628Example) {
  EXPECT_EQ(oauthbearer_initial_response("user@example.com", "server.example.com", 143,
                                         "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg=="),
            "bixhPXVzZXJAZXhhbXBsZS5jb20sAWhvc3Q9c2VydmVyLmV4YW1wbGUuY29tAXBvcnQ9MTQzAWF1dGg9QmVh"
            "cmVyIHZGOWRmdDRxbVRjMk52YjNSbGNrQmhiSFJoZG1semRHRXVZMjl0Q2c9PQEB");
  // RFC 5801 saslname: ',' and '=' in the authzid are escaped.
  EXPECT_EQ(*text::base64_decode(oauthbearer_initial_response("a,b=c", "h", 587, "t")),
            std::string("n,a=a=2Cb=3Dc,\x01host=h\x01port=587\x01"
                        "auth=Bearer t\x01\x01"));
}

SmtpClientOptions oauth_options(OAuth2Mechanism mechanism) {
  SmtpClientOptions o;
  o.ehlo_name = "relay.test";
  o.encryption = Encryption::None;
  o.username = "sender@example.com";
  o.oauth2 = mechanism;
  o.oauth2_host = "smtp.example.com";
  o.oauth2_port = 587;
  return o;
}

// Greeting and EHLO offering `auth`; expects NeedToken.
void reach_token_wait(SmtpClientSession& s, const std::string& auth) {
  s.feed("220 upstream.test ESMTP\r\n");
  auto out = s.feed("250-upstream.test\r\n250 " + auth + "\r\n");
  ASSERT_TRUE(has_event(out, Kind::NeedToken));
  ASSERT_EQ(s.state(), State::AuthToken);
  EXPECT_TRUE(out.write.empty());
}

TEST(SmtpClientOAuth2, Xoauth2Success) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::XOAuth2));
  reach_token_wait(s, "AUTH LOGIN XOAUTH2");
  auto out = s.provide_token("tok1", true);
  EXPECT_EQ(out.write,
            "AUTH XOAUTH2 " + xoauth2_initial_response("sender@example.com", "tok1") + "\r\n");
  out = s.feed("235 2.7.0 Accepted\r\n");
  EXPECT_TRUE(has_event(out, Kind::Ready));
  EXPECT_EQ(s.state(), State::Ready);
}

TEST(SmtpClientOAuth2, OauthbearerSuccess) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::OAuthBearer));
  reach_token_wait(s, "AUTH OAUTHBEARER XOAUTH2");
  auto out = s.provide_token("tok1", true);
  EXPECT_EQ(out.write, "AUTH OAUTHBEARER " +
                           oauthbearer_initial_response("sender@example.com", "smtp.example.com",
                                                        587, "tok1") +
                           "\r\n");
  EXPECT_TRUE(has_event(s.feed("235 ok\r\n"), Kind::Ready));
}

TEST(SmtpClientOAuth2, MechanismNotOffered) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::OAuthBearer));
  s.feed("220 upstream.test ESMTP\r\n");
  auto out = s.feed("250-upstream.test\r\n250 AUTH PLAIN XOAUTH2\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::AuthenticationFailed);
  EXPECT_NE(failed->result.message.find("OAUTHBEARER"), std::string::npos);
  EXPECT_FALSE(has_event(out, Kind::NeedToken));
}

TEST(SmtpClientOAuth2, ErrorChallengeIsAnsweredThenCachedTokenIsRenewedOnce) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::XOAuth2));
  reach_token_wait(s, "AUTH XOAUTH2");
  s.provide_token("stale", false);  // from the cache
  const std::string challenge = text::base64_encode(R"({"status":"401","schemes":"bearer"})");
  auto out = s.feed("334 " + challenge + "\r\n");
  EXPECT_EQ(out.write, "\r\n");  // the empty response; the server then sends its final reply
  EXPECT_EQ(s.state(), State::AuthOAuthError);
  out = s.feed("535 5.7.8 Username and Password not accepted\r\n");
  ASSERT_TRUE(has_event(out, Kind::NeedToken));
  EXPECT_EQ(s.last_token(), "stale");
  out = s.provide_token("fresh", true);
  EXPECT_EQ(out.write,
            "AUTH XOAUTH2 " + xoauth2_initial_response("sender@example.com", "fresh") + "\r\n");
  EXPECT_TRUE(has_event(s.feed("235 ok\r\n"), Kind::Ready));
}

TEST(SmtpClientOAuth2, OauthbearerErrorChallengeGetsTheDummyResponse) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::OAuthBearer));
  reach_token_wait(s, "AUTH OAUTHBEARER");
  s.provide_token("t", true);
  auto out = s.feed("334 eyJzdGF0dXMiOiI0MDEifQ==\r\n");
  EXPECT_EQ(out.write, "AQ==\r\n");  // RFC 7628 §3.2.3: a single %x01
  out = s.feed("535 5.7.8 no\r\n");
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.status, DeliveryStatus::AuthenticationFailed);
  EXPECT_EQ(failed->result.smtp_code, 535);
  EXPECT_FALSE(failed->result.retryable);
}

TEST(SmtpClientOAuth2, FreshTokenRefusedIsFinalAndRetryHappensOnlyOnce) {
  SmtpClientSession fresh(oauth_options(OAuth2Mechanism::XOAuth2));
  reach_token_wait(fresh, "AUTH XOAUTH2");
  fresh.provide_token("t", true);
  EXPECT_TRUE(has_event(fresh.feed("535 no\r\n"), Kind::Failed));

  SmtpClientSession cached(oauth_options(OAuth2Mechanism::XOAuth2));
  reach_token_wait(cached, "AUTH XOAUTH2");
  cached.provide_token("a", false);
  ASSERT_TRUE(has_event(cached.feed("535 no\r\n"), Kind::NeedToken));
  cached.provide_token("b", false);  // the source had nothing newer
  auto out = cached.feed("535 no\r\n");
  EXPECT_TRUE(has_event(out, Kind::Failed));
  EXPECT_FALSE(has_event(out, Kind::NeedToken));
}

TEST(SmtpClientOAuth2, TokenFailureFailsTheSessionWithTheEndpointError) {
  SmtpClientSession s(oauth_options(OAuth2Mechanism::XOAuth2));
  reach_token_wait(s, "AUTH XOAUTH2");
  DeliveryResult why =
      delivery_failure(DeliveryStatus::AuthenticationFailed, "Authentication failed", false);
  why.oauth2_error = "invalid_grant";
  auto out = s.token_failed(why);
  const auto* failed = find_event(out, Kind::Failed);
  ASSERT_NE(failed, nullptr);
  EXPECT_EQ(failed->result.oauth2_error, "invalid_grant");
  EXPECT_TRUE(s.terminal());
  EXPECT_TRUE(s.provide_token("late", true).write.empty());  // ignored after the end
}

TEST(TokenResponse, Parses) {
  auto ok = oauth2::parse_token_response(
      R"({"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ0","refresh_token":"r2","scope":"x"})");
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(ok->access_token, "eyJ0");
  EXPECT_EQ(ok->expires_in_s, 3599u);
  EXPECT_EQ(ok->refresh_token, "r2");
  auto as_string = oauth2::parse_token_response(R"({"access_token":"a","expires_in":"60"})");
  ASSERT_TRUE(as_string.ok());
  EXPECT_EQ(as_string->expires_in_s, 60u);
  auto err = oauth2::parse_token_response(
      R"({"error":"invalid_grant","error_description":"AADSTS70000: expired"})");
  ASSERT_TRUE(err.ok());
  EXPECT_EQ(err->error, "invalid_grant");
  EXPECT_TRUE(err->access_token.empty());
  EXPECT_FALSE(oauth2::parse_token_response("<html>").ok());
  EXPECT_FALSE(oauth2::parse_token_response("[1]").ok());
  EXPECT_FALSE(oauth2::parse_token_response(R"({"access_token":5})").ok());
  EXPECT_FALSE(oauth2::parse_token_response(R"({"access_token":"a","expires_in":"soon"})").ok());
  EXPECT_FALSE(oauth2::parse_token_response(R"({"access_token":"a","expires_in":-5})").ok());
  EXPECT_FALSE(
      oauth2::parse_token_response(std::string(oauth2::kMaxTokenResponseBytes + 1, ' ')).ok());
}

TEST(TokenRequest, Fields) {
  OAuth2Config c;
  c.grant = OAuth2Grant::ClientCredentials;
  c.client_id = "id";
  c.client_secret = "s";
  c.scope = "https://outlook.office365.com/.default";
  EXPECT_EQ(http_client::form_encode(oauth2::token_request_fields(c, "")),
            "grant_type=client_credentials&client_id=id&client_secret=s&scope=https%3A%2F%2F"
            "outlook.office365.com%2F.default");
  c.grant = OAuth2Grant::RefreshToken;
  c.scope.clear();
  EXPECT_EQ(http_client::form_encode(oauth2::token_request_fields(c, "r/1")),
            "grant_type=refresh_token&refresh_token=r%2F1&client_id=id&client_secret=s");
}

TEST(RefreshState, UsedOnlyForTheConfiguredTokenItCameFrom) {
  std::string file = oauth2::encode_refresh_state("configured", "rotated");
  EXPECT_EQ(oauth2::decode_refresh_state(file, "configured"), "rotated");
  EXPECT_EQ(oauth2::decode_refresh_state(file, "reconfigured"), std::nullopt);
  EXPECT_EQ(oauth2::decode_refresh_state("garbage", "configured"), std::nullopt);
  EXPECT_EQ(file.find("configured"), std::string::npos);  // only its hash is kept
}

}  // namespace
}  // namespace mailcar
