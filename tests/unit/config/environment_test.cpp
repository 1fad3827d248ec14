#include <gtest/gtest.h>

#include <map>

#include "mailcar/config.hpp"

using namespace mailcar;

namespace {

std::map<std::string, std::string>& vars() {
  static std::map<std::string, std::string> map;
  return map;
}

std::optional<std::string> lookup(const std::string& name) {
  auto it = vars().find(name);
  if (it == vars().end()) return std::nullopt;
  return it->second;
}

class EnvironmentConfigTest : public ::testing::Test {
 protected:
  void SetUp() override { vars() = {{"MAIL_HOST", "smtp.example.com"}}; }
};

}  // namespace

TEST_F(EnvironmentConfigTest, LaravelVariablesDefineOneServiceWithFullRights) {
  vars() = {{"MAIL_HOST", "smtp.gmail.com"},
            {"MAIL_PORT", "465"},
            {"MAIL_USERNAME", "me@gmail.com"},
            {"MAIL_PASSWORD", "app-password"},
            {"MAIL_ENCRYPTION", "ssl"},
            {"MAIL_FROM_ADDRESS", "noreply@example.com"},
            {"MAIL_FROM_NAME", "Example Support"},
            {"MAILCAR_API_KEY", "local-key"}};
  auto config = config_from_environment(lookup);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->file, "<environment>");
  ASSERT_EQ(config->services.size(), 1u);
  const ServiceConfig& email = config->services[0];
  EXPECT_EQ(email.name, "email");
  EXPECT_EQ(email.driver, ServiceDriver::Smtp);
  EXPECT_EQ(email.host, "smtp.gmail.com");
  EXPECT_EQ(email.port, 465);
  EXPECT_EQ(email.encryption, Encryption::Tls);
  EXPECT_EQ(email.username, "me@gmail.com");
  EXPECT_EQ(email.password, "app-password");
  EXPECT_EQ(email.from_email, "noreply@example.com");
  EXPECT_EQ(email.from_name, "Example Support");
  EXPECT_TRUE(email.tls_verify);

  ASSERT_EQ(config->roles.size(), 1u);
  const RoleConfig& role = config->roles[0];
  EXPECT_EQ(role.name, "default");
  EXPECT_FALSE(role.services.has_value());  // all services
  EXPECT_EQ(role.senders, (std::vector<std::string>{"*"}));
  EXPECT_TRUE(role.rate_limits.empty());
  EXPECT_FALSE(role.max_recipients.has_value());

  ASSERT_EQ(config->credentials.size(), 1u);
  EXPECT_EQ(config->credentials[0].api_key, "local-key");
  EXPECT_EQ(config->credentials[0].role, "default");
  EXPECT_EQ(config->smtp.service, "email");
  EXPECT_EQ(config->smtp.anonymous_role, "default");
  EXPECT_FALSE(config->smtp.hostname.empty());
  ASSERT_TRUE(config->listen_http.has_value());
  EXPECT_EQ(config->listen_http->text, "127.0.0.1:2580");
  ASSERT_TRUE(config->listen_smtp.has_value());
  EXPECT_EQ(config->listen_smtp->text, "127.0.0.1:2525");
  EXPECT_FALSE(config->spool.has_value());
}

TEST_F(EnvironmentConfigTest, MinimalSetupUsesDefaults) {
  auto config = config_from_environment(lookup);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->services[0].encryption, Encryption::StartTls);
  EXPECT_EQ(config->services[0].port, 587);
  EXPECT_TRUE(config->services[0].username.empty());
  EXPECT_TRUE(config->credentials.empty());  // no MAILCAR_API_KEY: SMTP on loopback only
}

TEST_F(EnvironmentConfigTest, EncryptionValues) {
  struct Case {
    const char* value;
    Encryption encryption;
    uint16_t port;
  };
  for (const Case& c :
       {Case{"tls", Encryption::StartTls, 587}, Case{"STARTTLS", Encryption::StartTls, 587},
        Case{"ssl", Encryption::Tls, 465}, Case{"", Encryption::None, 25},
        Case{"null", Encryption::None, 25}, Case{"none", Encryption::None, 25}}) {
    vars()["MAIL_ENCRYPTION"] = c.value;
    auto config = config_from_environment(lookup);
    ASSERT_TRUE(config.ok()) << c.value << ": " << config.error().message;
    EXPECT_EQ(config->services[0].encryption, c.encryption) << c.value;
    EXPECT_EQ(config->services[0].port, c.port) << c.value;
  }
  vars()["MAIL_ENCRYPTION"] = "tls1.3";
  auto bad = config_from_environment(lookup);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().message,
            "<environment>: MAIL_ENCRYPTION: must be tls, starttls, ssl, none, null or empty");
}

TEST_F(EnvironmentConfigTest, ErrorsNameTheVariable) {
  vars() = {{"MAIL_PORT", "smtp"},
            {"MAIL_PASSWORD", "hunter2"},
            {"MAIL_FROM_ADDRESS", "not-an-address"},
            {"MAILCAR_API_KEY", ""},
            {"MAILCAR_HTTP_LISTEN", "localhost:80"}};
  auto config = config_from_environment(lookup);
  ASSERT_FALSE(config.ok());
  EXPECT_EQ(config.error().message,
            "<environment>: MAIL_HOST: is not set (it names the upstream SMTP server)\n"
            "<environment>: MAIL_PORT: must be a number from 1 to 65535\n"
            "<environment>: MAIL_USERNAME: MAIL_USERNAME and MAIL_PASSWORD go together: set both "
            "or neither\n"
            "<environment>: MAIL_FROM_ADDRESS: is not a valid address: it must contain exactly "
            "one '@' (local@domain)\n"
            "<environment>: MAILCAR_API_KEY: is set but empty\n"
            "<environment>: MAILCAR_HTTP_LISTEN: the host must be a literal IP address (host "
            "names are not resolved here)");
}

TEST_F(EnvironmentConfigTest, ListenersCanMoveOrBeDisabled) {
  vars()["MAILCAR_HTTP_LISTEN"] = "0.0.0.0:8080";
  vars()["MAILCAR_SMTP_LISTEN"] = "[::1]:25";
  auto config = config_from_environment(lookup);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->listen_http->port, 8080);
  EXPECT_EQ(config->listen_smtp->host, "::1");

  vars()["MAILCAR_SMTP_LISTEN"] = "off";
  vars()["MAILCAR_HTTP_LISTEN"] = "";
  config = config_from_environment(lookup);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_FALSE(config->listen_http.has_value());
  EXPECT_FALSE(config->listen_smtp.has_value());
}

TEST_F(EnvironmentConfigTest, AnonymousSmtpMustStayOnLoopback) {
  vars()["MAILCAR_SMTP_LISTEN"] = "0.0.0.0:2525";
  auto config = config_from_environment(lookup);
  ASSERT_FALSE(config.ok());
  EXPECT_NE(config.error().message.find("MAILCAR_SMTP_LISTEN: must be a loopback address"),
            std::string::npos)
      << config.error().message;
  vars()["MAILCAR_SMTP_LISTEN"] = "127.0.0.2:2525";
  EXPECT_TRUE(config_from_environment(lookup).ok());
}
