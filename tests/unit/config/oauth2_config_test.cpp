// services.<name>.oauth2 (issue 9, SPEC §9.1).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>

#include "mailcar/config.hpp"

namespace mailcar {
namespace {

namespace fs = std::filesystem;

std::optional<std::string> no_env(const std::string&) {
  return std::nullopt;
}
std::optional<std::string> state_env(const std::string& name) {
  if (name == "STATE_DIRECTORY") return std::string("/var/lib/mailcar:/other");
  return std::nullopt;
}

std::string service(const std::string& oauth2, const std::string& more = "") {
  std::string s =
      "services:\n  m365:\n    host: smtp.office365.com\n    username: a@contoso.com\n" + more +
      "    oauth2:\n";
  std::string line;
  for (size_t i = 0; i <= oauth2.size(); ++i) {
    if (i == oauth2.size() || oauth2[i] == '\n') {
      if (!line.empty()) s += "      " + line + "\n";
      line.clear();
    } else {
      line += oauth2[i];
    }
  }
  return s;
}

const std::string kClientCredentials =
    "token_url: https://login.microsoftonline.com/t/oauth2/v2.0/token\n"
    "client_id: id\nclient_secret: s\nscope: https://outlook.office365.com/.default\n";

TEST(OAuth2Config, ClientCredentialsDefaults) {
  auto c = load_config_text(service(kClientCredentials), "/etc/mailcar/mailcar.yaml", no_env);
  ASSERT_TRUE(c.ok()) << c.error().message;
  const auto& o = c->services[0].oauth2;
  ASSERT_TRUE(o);
  EXPECT_EQ(o->grant, OAuth2Grant::ClientCredentials);
  EXPECT_EQ(o->mechanism, OAuth2Mechanism::XOAuth2);
  EXPECT_EQ(o->client_secret, "s");
  EXPECT_EQ(o->state_dir, "/etc/mailcar");
  EXPECT_TRUE(c->services[0].password.empty());
}

TEST(OAuth2Config, StateDirectoryPrefersTheEnvironmentThenTheSpool) {
  auto env = load_config_text(service(kClientCredentials), "/etc/mailcar/mailcar.yaml", state_env);
  ASSERT_TRUE(env.ok()) << env.error().message;
  EXPECT_EQ(env->services[0].oauth2->state_dir, "/var/lib/mailcar");
  auto spool =
      load_config_text(service(kClientCredentials) + "spool:\n  path: /var/spool/mailcar\n",
                       "/etc/mailcar/mailcar.yaml", no_env);
  ASSERT_TRUE(spool.ok()) << spool.error().message;
  EXPECT_EQ(spool->services[0].oauth2->state_dir, "/var/spool/mailcar");
}

TEST(OAuth2Config, RefreshTokenAndOauthbearer) {
  auto c = load_config_text(service("token_url: https://oauth2.googleapis.com/token\n"
                                    "grant: refresh_token\nclient_id: id\nclient_secret: s\n"
                                    "refresh_token: r\nmechanism: OAUTHBEARER\n"),
                            "/etc/mailcar.yaml", no_env);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->services[0].oauth2->grant, OAuth2Grant::RefreshToken);
  EXPECT_EQ(c->services[0].oauth2->refresh_token, "r");
  EXPECT_EQ(c->services[0].oauth2->mechanism, OAuth2Mechanism::OAuthBearer);
}

TEST(OAuth2Config, TokenFileIsAbsolute) {
  auto c = load_config_text(service("grant: token_file\ntoken_file: tok\n"), "/etc/m/mailcar.yaml",
                            no_env);
  ASSERT_TRUE(c.ok()) << c.error().message;
  EXPECT_EQ(c->services[0].oauth2->token_file, "/etc/m/tok");
}

void expect_error(const std::string& yaml, const std::string& fragment) {
  auto c = load_config_text(yaml, "/etc/mailcar.yaml", no_env);
  ASSERT_FALSE(c.ok()) << yaml;
  EXPECT_NE(c.error().message.find(fragment), std::string::npos) << c.error().message;
}

TEST(OAuth2Config, Errors) {
  expect_error(service("token_url: https://x/\nclient_id: id\n"), "client_secret");
  expect_error(service("token_url: http://x/\nclient_id: id\nclient_secret: s\n"),
               "must be an https:// URL");
  expect_error(service("client_id: id\nclient_secret: s\n"), "token_url is required");
  expect_error(service("grant: refresh_token\ntoken_url: https://x/\nclient_id: id\n"),
               "refresh_token");
  expect_error(service("grant: token_file\n"), "token_file is required");
  expect_error(service("grant: token_file\ntoken_file: /t\nclient_id: x\n"),
               "not used with this grant");
  expect_error(service("grant: password\n"), "client_credentials, refresh_token or token_file");
  expect_error(service(kClientCredentials + "mechanism: plain\n"), "xoauth2 or oauthbearer");
  expect_error(service(kClientCredentials + "client_secrte: x\n"), "client_secrte");
  expect_error(service(kClientCredentials, "    password: p\n"), "not both");
  expect_error(
      "services:\n  m:\n    host: h\n    oauth2:\n      grant: token_file\n"
      "      token_file: /t\n",
      "username");
}

}  // namespace
}  // namespace mailcar
