#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>

#include "mailcar/config.hpp"

using namespace mailcar;
namespace fs = std::filesystem;

namespace {

std::map<std::string, std::string>& env_vars() {
  static std::map<std::string, std::string> vars;
  return vars;
}

std::optional<std::string> test_env(const std::string& name) {
  auto it = env_vars().find(name);
  if (it == env_vars().end()) return std::nullopt;
  return it->second;
}

// Temporary folder for config and secret files, removed after each test.
class ConfigTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_vars().clear();
    std::string pattern = (fs::temp_directory_path() / "mailcar-config-XXXXXX").string();
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string write(const std::string& name, const std::string& content) {
    fs::path p = dir_ / name;
    fs::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << content;
    return p.string();
  }

  Result<Config> load(const std::string& yaml) {
    return load_config_text(yaml, (dir_ / "mailcar.yaml").string(), test_env);
  }

  // The error text, with the temp folder replaced by "DIR" for readable expectations.
  std::string errors_of(const std::string& yaml) {
    auto result = load(yaml);
    EXPECT_FALSE(result.ok()) << yaml;
    if (result.ok()) return "";
    std::string message = result.error().message;
    std::string needle = dir_.string();
    for (size_t pos; (pos = message.find(needle)) != std::string::npos;) {
      message.replace(pos, needle.size(), "DIR");
    }
    return message;
  }

  fs::path dir_;
};

constexpr const char* kMinimal = "services:\n  email:\n    host: smtp.example.com\n";

MATCHER_P(HasLine, line, "") {
  std::string text = "\n" + arg + "\n";
  if (text.find("\n" + std::string(line) + "\n") != std::string::npos) return true;
  *result_listener << "errors were:\n" << arg;
  return false;
}

}  // namespace

TEST_F(ConfigTest, MinimalConfigGetsDefaults) {
  auto config = load(kMinimal);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->file, (dir_ / "mailcar.yaml").string());
  ASSERT_TRUE(config->listen_http.has_value());
  EXPECT_EQ(config->listen_http->host, "127.0.0.1");
  EXPECT_EQ(config->listen_http->port, 2580);
  EXPECT_FALSE(config->listen_smtp.has_value());
  ASSERT_EQ(config->services.size(), 1u);
  const ServiceConfig& email = config->services[0];
  EXPECT_EQ(email.name, "email");
  EXPECT_EQ(email.driver, ServiceDriver::Smtp);
  EXPECT_EQ(email.host, "smtp.example.com");
  EXPECT_EQ(email.port, 587);
  EXPECT_EQ(email.encryption, Encryption::StartTls);
  EXPECT_TRUE(email.tls_verify);
  EXPECT_EQ(email.connections, 2u);
  EXPECT_EQ(email.connect_timeout_ms, 30'000u);
  EXPECT_EQ(email.command_timeout_ms, 60'000u);
  EXPECT_FALSE(email.rate_limit.has_value());
  EXPECT_TRUE(config->roles.empty());
  EXPECT_TRUE(config->credentials.empty());
  EXPECT_FALSE(config->spool.has_value());
  EXPECT_FALSE(config->smtp.anonymous_role.has_value());
  EXPECT_FALSE(config->smtp.hostname.empty());
  EXPECT_EQ(config->limits.max_message_bytes, 26'214'400u);
  EXPECT_EQ(config->limits.max_connections, 1000u);
  EXPECT_EQ(config->limits.idle_timeout_ms, 60'000u);
  EXPECT_EQ(config->limits.shutdown_grace_ms, 30'000u);
  EXPECT_EQ(config->limits.delivery_timeout_ms, 120'000u);
  EXPECT_EQ(config->log.format, LogFormat::Json);
  EXPECT_EQ(config->log.level, LogLevel::Info);
  EXPECT_EQ(config->find_service("email"), &config->services[0]);
  EXPECT_EQ(config->find_service("other"), nullptr);
  EXPECT_EQ(config->find_role("email"), nullptr);
}

TEST_F(ConfigTest, SpecExampleLoadsCompletely) {
  env_vars() = {{"SMTP_PASSWORD", "app-password"},
                {"WEBAPP_API_KEY", "key-123"},
                {"LEGACY_PASSWORD", "legacy-pw"}};
  const char* yaml = R"(
listen:
  http: 127.0.0.1:2580
  smtp: 127.0.0.1:2525
services:
  email:
    host: smtp.gmail.com
    port: 587
    encryption: tls
    username: me@gmail.com
    password: ${SMTP_PASSWORD}
    tls_verify: true
    ca_file: /etc/ssl/certs/ca-certificates.crt
    from_name: Example Support
    from_email: noreply@example.com
    reply_to_name: Support
    reply_to_email: support@example.com
    rate_limit: 500/day
    connections: 3
    connect_timeout: 10s
    command_timeout: 2m
  outbox:
    driver: file
    path: ./outbox
roles:
  webapp:
    services: [email]
    senders: ["noreply@example.com", "*@example.com"]
    rate_limits: [50/second, 1000/hour]
    max_recipients: 20
  legacy:
    services: [email, outbox]
    senders: ["*@legacy.example.com", "*@*.example.org", "*"]
    rate_limits: [100/minute]
credentials:
  - api_key: ${WEBAPP_API_KEY}
    role: webapp
  - smtp_username: legacy-app
    smtp_password: ${LEGACY_PASSWORD}
    role: legacy
smtp:
  service: email
  anonymous_role: legacy
  hostname: mailcar.local
  tls_cert: /etc/mailcar/tls.crt
  tls_key: tls.key
spool:
  path: /var/spool/mailcar
  retry: [1m, 5m, 30m, 2h]
  max_age: 3d
limits:
  max_message_bytes: 10MB
  max_connections: 50
  idle_timeout: 90s
  shutdown_grace: 0s
log:
  format: text
  level: debug
)";
  auto config = load(yaml);
  ASSERT_TRUE(config.ok()) << config.error().message;
  ASSERT_TRUE(config->listen_smtp.has_value());
  EXPECT_EQ(config->listen_smtp->port, 2525);
  ASSERT_EQ(config->services.size(), 2u);
  const ServiceConfig& email = config->services[0];
  EXPECT_EQ(email.username, "me@gmail.com");
  EXPECT_EQ(email.password, "app-password");
  EXPECT_EQ(email.ca_file, "/etc/ssl/certs/ca-certificates.crt");
  EXPECT_EQ(email.from_name, "Example Support");
  EXPECT_EQ(email.from_email, "noreply@example.com");
  EXPECT_EQ(email.reply_to_name, "Support");
  EXPECT_EQ(email.reply_to_email, "support@example.com");
  ASSERT_TRUE(email.rate_limit.has_value());
  EXPECT_EQ(*email.rate_limit, (Rate{500, 86'400'000, "500/day"}));
  EXPECT_EQ(email.connections, 3u);
  EXPECT_EQ(email.connect_timeout_ms, 10'000u);
  EXPECT_EQ(email.command_timeout_ms, 120'000u);
  const ServiceConfig& outbox = config->services[1];
  EXPECT_EQ(outbox.name, "outbox");
  EXPECT_EQ(outbox.driver, ServiceDriver::File);
  EXPECT_EQ(outbox.path, (dir_ / "outbox").string());

  ASSERT_EQ(config->roles.size(), 2u);
  const RoleConfig* webapp = config->find_role("webapp");
  ASSERT_NE(webapp, nullptr);
  EXPECT_EQ(webapp->services, (std::vector<std::string>{"email"}));
  EXPECT_EQ(webapp->senders, (std::vector<std::string>{"noreply@example.com", "*@example.com"}));
  ASSERT_EQ(webapp->rate_limits.size(), 2u);
  EXPECT_EQ(webapp->rate_limits[0], (Rate{50, 1000, "50/second"}));
  EXPECT_EQ(webapp->rate_limits[1], (Rate{1000, 3'600'000, "1000/hour"}));
  EXPECT_EQ(webapp->max_recipients, 20u);
  const RoleConfig* legacy = config->find_role("legacy");
  ASSERT_NE(legacy, nullptr);
  EXPECT_EQ(legacy->services, (std::vector<std::string>{"email", "outbox"}));
  EXPECT_FALSE(legacy->max_recipients.has_value());

  ASSERT_EQ(config->credentials.size(), 2u);
  EXPECT_EQ(config->credentials[0].api_key, "key-123");
  EXPECT_EQ(config->credentials[0].role, "webapp");
  EXPECT_TRUE(config->credentials[0].smtp_username.empty());
  EXPECT_EQ(config->credentials[1].smtp_username, "legacy-app");
  EXPECT_EQ(config->credentials[1].smtp_password, "legacy-pw");
  EXPECT_TRUE(config->credentials[1].api_key.empty());

  EXPECT_EQ(config->smtp.service, "email");
  EXPECT_EQ(config->smtp.anonymous_role, "legacy");
  EXPECT_EQ(config->smtp.hostname, "mailcar.local");
  EXPECT_EQ(config->smtp.tls_cert, "/etc/mailcar/tls.crt");
  EXPECT_EQ(config->smtp.tls_key, (dir_ / "tls.key").string());

  ASSERT_TRUE(config->spool.has_value());
  EXPECT_EQ(config->spool->path, "/var/spool/mailcar");
  EXPECT_EQ(config->spool->retry_ms,
            (std::vector<uint64_t>{60'000, 300'000, 1'800'000, 7'200'000}));
  EXPECT_EQ(config->spool->max_age_ms, 259'200'000u);
  EXPECT_EQ(config->limits.max_message_bytes, 10u * 1024 * 1024);
  EXPECT_EQ(config->limits.max_connections, 50u);
  EXPECT_EQ(config->limits.idle_timeout_ms, 90'000u);
  EXPECT_EQ(config->limits.shutdown_grace_ms, 0u);
  EXPECT_EQ(config->log.format, LogFormat::Text);
  EXPECT_EQ(config->log.level, LogLevel::Debug);
}

TEST_F(ConfigTest, PortDefaultsFollowEncryption) {
  auto config = load(R"(
services:
  plain: {host: a.example, encryption: none}
  implicit: {host: b.example, encryption: ssl}
  starttls: {host: c.example, encryption: tls}
  explicit: {host: d.example, encryption: ssl, port: 2465}
)");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->find_service("plain")->port, 25);
  EXPECT_EQ(config->find_service("plain")->encryption, Encryption::None);
  EXPECT_EQ(config->find_service("implicit")->port, 465);
  EXPECT_EQ(config->find_service("implicit")->encryption, Encryption::Tls);
  EXPECT_EQ(config->find_service("starttls")->port, 587);
  EXPECT_EQ(config->find_service("explicit")->port, 2465);
}

TEST_F(ConfigTest, EnvironmentIsExpandedBeforeTyping) {
  env_vars() = {{"SMTP_PORT", "2525"}, {"HOST", "relay.example"}, {"VERIFY", "false"}};
  auto config = load(R"yaml(
services:
  email:
    host: ${HOST}
    port: ${SMTP_PORT}
    tls_verify: ${VERIFY}
    connections: ${CONNECTIONS:-4}
    from_name: "${FROM_NAME:-Mail Car} (${HOST})"
)yaml");
  ASSERT_TRUE(config.ok()) << config.error().message;
  const ServiceConfig& email = config->services[0];
  EXPECT_EQ(email.host, "relay.example");
  EXPECT_EQ(email.port, 2525);
  EXPECT_FALSE(email.tls_verify);
  EXPECT_EQ(email.connections, 4u);
  EXPECT_EQ(email.from_name, "Mail Car (relay.example)");
}

TEST_F(ConfigTest, MissingVariableIsAnErrorNamingIt) {
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    password: ${SMTP_PASSWORD}\n"
                      "    username: u\n"),
            "DIR/mailcar.yaml:4:15: services.email.password: environment variable "
            "SMTP_PASSWORD is not set");
}

TEST_F(ConfigTest, ErrorsNeverShowTheVariablesValue) {
  env_vars() = {{"SECRET", "hunter2"}};
  std::string errors = errors_of("services:\n  email:\n    host: x\n    port: ${SECRET}\n");
  EXPECT_EQ(errors,
            "DIR/mailcar.yaml:4:11: services.email.port: must be a whole number from 1 to 65535");
  EXPECT_EQ(errors.find("hunter2"), std::string::npos);
}

TEST_F(ConfigTest, UnknownKeysAtEveryLevelAreReportedWithPosition) {
  const char* yaml = R"(listen:
  htp: 127.0.0.1:1
services:
  email:
    host: x
    prot: 25
roles:
  r:
    rate_limit: 5/s
credentials:
  - api_key: k
    role: r
    rol: r
smtp:
  hostnme: a
spool:
  path: /tmp/s
  retries: [1s]
limits:
  max_message_size: 1
log:
  levle: info
template: {}
)";
  std::string errors = errors_of(yaml);
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:2:3: listen.htp: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:6:5: services.email.prot: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:9:5: roles.r.rate_limit: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:13:5: credentials[0].rol: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:15:3: smtp.hostnme: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:18:3: spool.retries: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:20:3: limits.max_message_size: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:22:3: log.levle: unknown key"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:23:1: template: unknown key"));
  EXPECT_EQ(std::count(errors.begin(), errors.end(), '\n'), 8) << errors;
}

TEST_F(ConfigTest, BadValuesAreCollectedOnePerLine) {
  const char* yaml = R"(services:
  email:
    host: x
    encryption: starttls-please
    connections: 0
    rate_limit: 5/week
    tls_verify: maybe
    connect_timeout: 30
limits:
  max_message_bytes: 10TB
  idle_timeout: 0s
log:
  format: xml
  level: verbose
)";
  EXPECT_EQ(errors_of(yaml),
            "DIR/mailcar.yaml:6:17: services.email.rate_limit: is not a rate: write N/second, "
            "N/minute, N/hour or N/day (N >= 1)\n"
            "DIR/mailcar.yaml:4:17: services.email.encryption: must be tls (STARTTLS), ssl "
            "(implicit TLS) or none\n"
            "DIR/mailcar.yaml:7:17: services.email.tls_verify: must be true or false\n"
            "DIR/mailcar.yaml:5:18: services.email.connections: must be a whole number from 1 "
            "to 1000\n"
            "DIR/mailcar.yaml:8:22: services.email.connect_timeout: is not a duration: write a "
            "number with a unit, e.g. 250ms, 30s, 5m, 2h, 3d\n"
            "DIR/mailcar.yaml:10:22: limits.max_message_bytes: is not a size: write bytes "
            "(26214400) or e.g. 512KB, 25MB, 1GB (1024-based)\n"
            "DIR/mailcar.yaml:11:17: limits.idle_timeout: must be longer than zero\n"
            "DIR/mailcar.yaml:13:11: log.format: must be json or text\n"
            "DIR/mailcar.yaml:14:10: log.level: must be error, warn, info or debug");
}

// Upstream deadlines (issue 7): limits.delivery_timeout, and it must cover one connect and one
// reply.
TEST_F(ConfigTest, DeliveryTimeout) {
  auto config = load(
      "services:\n  email:\n    host: x\n    command_timeout: 90s\n"
      "limits:\n  delivery_timeout: 3m\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->limits.delivery_timeout_ms, 180'000u);
  // A file service has no upstream timeouts to cover.
  config = load(
      "services:\n  out:\n    driver: file\n    path: out\nlimits:\n"
      "  delivery_timeout: 1s\n");
  ASSERT_TRUE(config.ok()) << config.error().message;

  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\nlimits:\n  delivery_timeout: 10s\n"),
            "DIR/mailcar.yaml:5:21: limits.delivery_timeout: is shorter than "
            "services.email.command_timeout (1m); make it at least that long");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    connect_timeout: 45s\n"
                      "    command_timeout: 30s\nlimits:\n  delivery_timeout: 40s\n"),
            "DIR/mailcar.yaml:7:21: limits.delivery_timeout: is shorter than "
            "services.email.connect_timeout (45s); make it at least that long");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    command_timeout: 5m\n"),
            "DIR/mailcar.yaml:1:1: limits.delivery_timeout: the default 2m is shorter than "
            "services.email.command_timeout (5m); set limits.delivery_timeout to at least that");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\nlimits:\n  delivery_timeout: 0s\n"),
            "DIR/mailcar.yaml:5:21: limits.delivery_timeout: must be longer than zero");
}

TEST_F(ConfigTest, YamlSyntaxErrorsHaveAPosition) {
  EXPECT_EQ(errors_of("services:\n  email: [host\n  other: 1\n"),
            "DIR/mailcar.yaml:3:8: YAML syntax error: end of sequence flow not found");
  std::string tab = errors_of("services:\n\temail: {}\n");
  EXPECT_EQ(tab.rfind("DIR/mailcar.yaml:2:", 0), 0u) << tab;
  EXPECT_NE(tab.find("YAML syntax error"), std::string::npos);
}

TEST_F(ConfigTest, StructureErrors) {
  EXPECT_EQ(errors_of("- a\n- b\n"), "DIR/mailcar.yaml:1:1: expected a map of keys, found a list");
  EXPECT_EQ(errors_of(""), "DIR/mailcar.yaml:1:1: services: at least one service is required");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: [a, b]\n"),
            "DIR/mailcar.yaml:3:11: services.email.host: expected a single value, found a list");
  EXPECT_EQ(errors_of("services:\n  email:\n    host:\n"),
            "DIR/mailcar.yaml:3:5: services.email.host: has no value (give one or remove the "
            "key)");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: a\n    host: b\n"),
            "DIR/mailcar.yaml:4:5: services.email.host: duplicate key");
  EXPECT_EQ(errors_of("services: [email]\n"),
            "DIR/mailcar.yaml:1:11: services: expected a map of keys, found a list");
  EXPECT_EQ(errors_of("services:\n  email: {host: a}\n---\nlog: {}\n"),
            "DIR/mailcar.yaml:3:1: only one YAML document is allowed");
  EXPECT_EQ(errors_of("services:\n  bad name:\n    host: a\n"),
            "DIR/mailcar.yaml:2:3: services.bad name: service name may contain only letters, "
            "digits, '_', '.' and '-'");
}

TEST_F(ConfigTest, EmptySectionsKeepDefaults) {
  auto config = load(std::string(kMinimal) + "log:\nlimits: {}\nroles:\n  open:\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->log.level, LogLevel::Info);
  ASSERT_EQ(config->roles.size(), 1u);
  EXPECT_FALSE(config->roles[0].services.has_value());  // all services
  EXPECT_FALSE(config->roles[0].senders.has_value());   // only the services' from_email
}

TEST_F(ConfigTest, CyclicAliasesDoNotHang) {
  std::string errors = errors_of("services: &s\n  email: *s\n");
  EXPECT_NE(errors.find("services.email.email: unknown key"), std::string::npos) << errors;
}

TEST_F(ConfigTest, SecretsFromFilesLoseOneTrailingNewline) {
  write("secrets/smtp", "s3cret\n\n");
  write("secrets/key", "api-key-from-file\r\n");
  write("secrets/legacy", "pw");
  auto config = load(R"(
services:
  email:
    host: x
    username: u
    password_file: secrets/smtp
roles:
  r: {}
credentials:
  - api_key_file: ./secrets/key
    role: r
  - smtp_username: legacy
    smtp_password_file: )" +
                     (dir_ / "secrets/legacy").string() + R"(
    role: r
)");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->services[0].password, "s3cret\n");
  EXPECT_EQ(config->credentials[0].api_key, "api-key-from-file");
  EXPECT_EQ(config->credentials[1].smtp_password, "pw");
}

TEST_F(ConfigTest, SecretFileErrors) {
  write("key", "top-secret-value\n");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    username: u\n    password: a\n"
                      "    password_file: key\n"),
            "DIR/mailcar.yaml:6:5: services.email.password_file: give either password or "
            "password_file, not both");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    username: u\n"
                      "    password_file: missing\n"),
            "DIR/mailcar.yaml:5:20: services.email.password_file: cannot read DIR/missing: No "
            "such file or directory");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    username: u\n"
                      "    password_file: .\n"),
            "DIR/mailcar.yaml:5:20: services.email.password_file: cannot read DIR: not a "
            "regular file");
  write("empty", "\n");
  std::string empty = errors_of(std::string(kMinimal) +
                                "roles: {r: {}}\ncredentials:\n  - api_key_file: empty\n"
                                "    role: r\n");
  EXPECT_EQ(empty,
            "DIR/mailcar.yaml:6:19: credentials[0].api_key_file: is empty (is its "
            "environment variable set?)");
}

TEST_F(ConfigTest, RelativePathsAreAnchoredAtTheConfigFolder) {
  auto config = load_config_text(R"(
services:
  email: {host: x, ca_file: certs/ca.pem}
  outbox: {driver: file, path: ../outbox}
  abs: {driver: file, path: /srv/mail/./out}
smtp: {tls_cert: tls/cert.pem, tls_key: /etc/key.pem}
spool: {path: spool}
)",
                                 (dir_ / "conf" / "mailcar.yaml").string(), test_env);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->services[0].ca_file, (dir_ / "conf/certs/ca.pem").string());
  EXPECT_EQ(config->services[1].path, (dir_ / "outbox").string());
  EXPECT_EQ(config->services[2].path, "/srv/mail/out");
  EXPECT_EQ(config->smtp.tls_cert, (dir_ / "conf/tls/cert.pem").string());
  EXPECT_EQ(config->smtp.tls_key, "/etc/key.pem");
  EXPECT_EQ(config->spool->path, (dir_ / "conf/spool").string());
  EXPECT_EQ(config->spool->retry_ms.size(), 4u);  // default schedule kept
}

// Spool mode keys (issue 8, SPEC §7.1).
TEST_F(ConfigTest, SpoolDeliveryKeysDefaultsAndValues) {
  auto config = load(std::string(kMinimal) + "spool: {path: /s}\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->spool->bounces, SpoolBounces::Sender);
  EXPECT_EQ(config->spool->bounce_address, "");
  EXPECT_EQ(config->spool->keep_failed_ms, 86'400'000u);
  EXPECT_FALSE(config->spool->max_bytes.has_value());
  EXPECT_FALSE(config->spool->drain);

  config = load(std::string(kMinimal) +
                "spool:\n  path: /s\n  bounces: postmaster@example.com\n  keep_failed: 0s\n"
                "  max_bytes: 1GB\n  drain: true\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->spool->bounces, SpoolBounces::Address);
  EXPECT_EQ(config->spool->bounce_address, "postmaster@example.com");
  EXPECT_EQ(config->spool->keep_failed_ms, 0u);
  EXPECT_EQ(config->spool->max_bytes, 1024ull * 1024 * 1024);
  EXPECT_TRUE(config->spool->drain);

  config = load(std::string(kMinimal) + "spool: {path: /s, bounces: none, max_bytes: none}\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->spool->bounces, SpoolBounces::None);
  EXPECT_FALSE(config->spool->max_bytes.has_value());
}

TEST_F(ConfigTest, SpoolDeliveryKeysRejectBadValues) {
  std::string errors = errors_of(std::string(kMinimal) +
                                 "spool:\n  path: /s\n  bounces: nobody\n  keep_failed: soon\n"
                                 "  max_bytes: 0\n  drain: maybe\n");
  EXPECT_THAT(errors, ::testing::HasSubstr(
                          ("DIR/mailcar.yaml:6:12: spool.bounces: must be sender, none or an "
                           "address")));
  EXPECT_THAT(errors, ::testing::HasSubstr(("DIR/mailcar.yaml:7:16: spool.keep_failed:")));
  EXPECT_THAT(errors, ::testing::HasSubstr(("DIR/mailcar.yaml:8:14: spool.max_bytes:")));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:9:10: spool.drain: must be true or false"));
  EXPECT_EQ(std::count(errors.begin(), errors.end(), '\n'), 3) << errors;  // 4 lines
}

// Queue API roles (issue 8, SPEC §7.1).
TEST_F(ConfigTest, RoleQueueAllOnlyTakesAll) {
  auto config = load(std::string(kMinimal) + "roles:\n  ops: {queue: all}\n  app: {}\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_TRUE(config->find_role("ops")->queue_all);
  EXPECT_FALSE(config->find_role("app")->queue_all);
  EXPECT_EQ(errors_of(std::string(kMinimal) + "roles:\n  ops:\n    queue: own\n"),
            "DIR/mailcar.yaml:6:12: roles.ops.queue: must be 'all' (leave it out for a role "
            "that sees only its own messages)");
}

// Idempotency keys, capture and mirror (issue 10, SPEC §10.3, §10.4).
TEST_F(ConfigTest, IdempotencyDefaultsAndValues) {
  auto config = load(kMinimal);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->idempotency.ttl_ms, 24ull * 3600 * 1000);
  EXPECT_EQ(config->idempotency.max_keys, 100000u);
  config = load(std::string(kMinimal) + "idempotency:\n  ttl: 10m\n  max_keys: 50\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->idempotency.ttl_ms, 600'000u);
  EXPECT_EQ(config->idempotency.max_keys, 50u);
  EXPECT_THAT(errors_of(std::string(kMinimal) + "idempotency:\n  ttl: 1h\n  keys: 5\n"),
              HasLine("DIR/mailcar.yaml:6:3: idempotency.keys: unknown key"));
}

TEST_F(ConfigTest, CaptureNeedsAFileServiceAndMirrorToTakesAddresses) {
  std::string services =
      "services:\n  email:\n    host: smtp.example.com\n    mirror_to: [svc@example.org]\n"
      "  outbox:\n    driver: file\n    path: out\n";
  auto config =
      load(services + "roles:\n  staging:\n    capture: outbox\n    mirror_to: [a@example.org]\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->find_role("staging")->capture, "outbox");
  EXPECT_EQ(config->find_role("staging")->mirror_to, std::vector<std::string>{"a@example.org"});
  EXPECT_EQ(config->find_service("email")->mirror_to, std::vector<std::string>{"svc@example.org"});
  EXPECT_EQ(errors_of(services + "roles:\n  staging:\n    capture: email\n"),
            "DIR/mailcar.yaml:10:14: roles.staging.capture: service 'email' must be a driver: "
            "file service");
  EXPECT_EQ(errors_of(services + "roles:\n  staging:\n    capture: nope\n"),
            "DIR/mailcar.yaml:10:14: roles.staging.capture: no service named 'nope'");
  EXPECT_NE(errors_of(services + "roles:\n  staging:\n    mirror_to: [not an address]\n")
                .find("DIR/mailcar.yaml:10:17: roles.staging.mirror_to[0]: "),
            std::string::npos);
}

TEST_F(ConfigTest, FileDriverRules) {
  EXPECT_EQ(errors_of("services:\n  outbox:\n    driver: file\n    path: out\n    host: x\n"
                      "    port: 25\n"),
            "DIR/mailcar.yaml:5:5: services.outbox.host: not allowed with driver: file\n"
            "DIR/mailcar.yaml:6:5: services.outbox.port: not allowed with driver: file");
  EXPECT_EQ(errors_of("services:\n  outbox:\n    driver: file\n"),
            "DIR/mailcar.yaml:3:5: services.outbox: driver: file needs a path (the directory "
            "to write to)");
  EXPECT_EQ(errors_of("services:\n  email:\n    path: out\n"),
            "DIR/mailcar.yaml:3:5: services.email.path: only allowed with driver: file\n"
            "DIR/mailcar.yaml:3:5: services.email: host is required (the upstream SMTP server)");
  EXPECT_EQ(errors_of("services:\n  email:\n    driver: sendmail\n    host: x\n"),
            "DIR/mailcar.yaml:3:13: services.email.driver: must be smtp or file");
}

TEST_F(ConfigTest, ServiceAddressesAndCredentialsPairs) {
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    from_email: \"a@b@c\"\n"
                      "    reply_to_name: \"x\\r\\nBcc: y\"\n"),
            "DIR/mailcar.yaml:4:17: services.email.from_email: is not a valid address: it must "
            "contain exactly one '@' (local@domain)\n"
            "DIR/mailcar.yaml:5:20: services.email.reply_to_name: must not contain CR, LF or "
            "NUL");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    password: p\n"),
            "DIR/mailcar.yaml:4:5: services.email.password: a password needs a username");
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    username: u\n"),
            "DIR/mailcar.yaml:4:5: services.email.username: a username needs a password "
            "(password or password_file)");
}

TEST_F(ConfigTest, ListenAddresses) {
  auto config = load(std::string(kMinimal) + "listen:\n  smtp: \"[::1]:2525\"\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_FALSE(config->listen_http.has_value());  // listen given without http: disabled
  ASSERT_TRUE(config->listen_smtp.has_value());
  EXPECT_EQ(config->listen_smtp->host, "::1");
  EXPECT_EQ(config->smtp.service, "email");  // the only service
  EXPECT_EQ(errors_of(std::string(kMinimal) + "listen:\n  http: localhost:2580\n"),
            "DIR/mailcar.yaml:5:9: listen.http: the host must be a literal IP address (host "
            "names are not resolved here)");
  EXPECT_EQ(errors_of(std::string(kMinimal) + "listen:\n  http: 127.0.0.1:25\n  smtp: "
                                              "127.0.0.1:25\n"),
            "DIR/mailcar.yaml:6:9: listen.smtp: is the same address as listen.http");
}

// listen.smtps (issue 13): implicit TLS beside listen.smtp, with the smtp certificate.
TEST_F(ConfigTest, ListenSmtpsNeedsTheCertificate) {
  std::string listen = "listen:\n  smtp: 127.0.0.1:2525\n  smtps: 127.0.0.1:2465\n";
  auto config =
      load(std::string(kMinimal) + listen + "smtp:\n  tls_cert: c.pem\n  tls_key: k.pem\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  ASSERT_TRUE(config->listen_smtps.has_value());
  EXPECT_EQ(config->listen_smtps->port, 2465);
  EXPECT_EQ(config->smtp.service, "email");
  EXPECT_EQ(errors_of(std::string(kMinimal) + listen),
            "DIR/mailcar.yaml:1:1: smtp.tls_cert: and smtp.tls_key are required when "
            "listen.smtps is set (implicit TLS)");
  EXPECT_EQ(
      errors_of(std::string(kMinimal) + "listen:\n  smtp: 127.0.0.1:25\n  smtps: 127.0.0.1:25\n"
                                        "smtp:\n  tls_cert: c.pem\n  tls_key: k.pem\n"),
      "DIR/mailcar.yaml:6:10: listen.smtps: is the same address as listen.smtp");
}

TEST_F(ConfigTest, SmtpServiceIsRequiredWithSeveralServices) {
  const char* yaml = R"(listen: {smtp: 127.0.0.1:2525}
services:
  a: {host: x}
  b: {host: y}
)";
  EXPECT_EQ(errors_of(yaml),
            "DIR/mailcar.yaml:1:1: smtp.service: is required when listen.smtp is set and there "
            "is more than one service");
  auto config = load(std::string(yaml) + "smtp: {service: b}\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->smtp.service, "b");
}

TEST_F(ConfigTest, CrossReferencesMustExist) {
  const char* yaml = R"(services:
  email: {host: x}
roles:
  r:
    services: [email, mail]
credentials:
  - api_key: k
    role: nobody
smtp:
  service: gmail
  anonymous_role: guest
  tls_cert: c.pem
)";
  EXPECT_EQ(errors_of(yaml),
            "DIR/mailcar.yaml:5:23: roles.r.services[1]: no service named 'mail'\n"
            "DIR/mailcar.yaml:8:11: credentials[0].role: no role named 'nobody'\n"
            "DIR/mailcar.yaml:10:12: smtp.service: no service named 'gmail'\n"
            "DIR/mailcar.yaml:11:19: smtp.anonymous_role: no role named 'guest'\n"
            "DIR/mailcar.yaml:12:3: smtp.tls_cert: tls_cert and tls_key go together: give both");
}

TEST_F(ConfigTest, RoleValues) {
  const char* yaml = R"(services:
  email: {host: x}
roles:
  r:
    senders: ["ok@example.com", "*.example.com", "a*@example.com"]
    rate_limits: [10/s, ten/minute]
    max_recipients: 0
  s:
    senders: "*"
)";
  EXPECT_EQ(errors_of(yaml),
            "DIR/mailcar.yaml:5:33: roles.r.senders[1]: '*.example.com' is not a sender "
            "pattern: use an exact address, *@domain, *@*.domain or *\n"
            "DIR/mailcar.yaml:5:50: roles.r.senders[2]: 'a*@example.com' is not a sender "
            "pattern: use an exact address, *@domain, *@*.domain or *\n"
            "DIR/mailcar.yaml:6:25: roles.r.rate_limits[1]: is not a rate: write N/second, "
            "N/minute, N/hour or N/day (N >= 1)\n"
            "DIR/mailcar.yaml:7:21: roles.r.max_recipients: must be a whole number from 1 to "
            "100000\n"
            "DIR/mailcar.yaml:9:14: roles.s.senders: expected a list, found a single value");
}

TEST_F(ConfigTest, CredentialRules) {
  env_vars() = {{"EMPTY_KEY", ""}};
  const char* yaml = R"(services:
  email: {host: x}
roles:
  r: {}
credentials:
  - api_key: k1
    smtp_username: u
    smtp_password: p
    role: r
  - role: r
  - api_key: ${EMPTY_KEY}
    role: r
  - smtp_username: u2
    role: r
  - api_key: dup-key
    role: r
  - api_key: dup-key
    role: r
  - smtp_username: same
    smtp_password: a
    role: r
  - smtp_username: same
    smtp_password: b
  - api_key: k9
    role: r
)";
  std::string errors = errors_of(yaml);
  EXPECT_EQ(errors,
            "DIR/mailcar.yaml:6:5: credentials[0]: give either api_key or smtp_username + "
            "smtp_password, not both\n"
            "DIR/mailcar.yaml:10:5: credentials[1]: needs api_key or smtp_username + "
            "smtp_password\n"
            "DIR/mailcar.yaml:11:14: credentials[2].api_key: is empty (is its environment "
            "variable set?)\n"
            "DIR/mailcar.yaml:13:5: credentials[3]: smtp_username needs an smtp_password\n"
            "DIR/mailcar.yaml:17:14: credentials[5].api_key: the same key is already given by "
            "credentials[4]\n"
            "DIR/mailcar.yaml:22:5: credentials[7]: role is required\n"
            "DIR/mailcar.yaml:22:20: credentials[7].smtp_username: the same user name is "
            "already given by credentials[6]");
  EXPECT_EQ(errors.find("dup-key"), std::string::npos);
}

// Slow SMTP clients and per-client connections (issue 7).
TEST_F(ConfigTest, ClientLimits) {
  auto defaults = load(kMinimal);
  ASSERT_TRUE(defaults.ok()) << defaults.error().message;
  EXPECT_EQ(defaults->limits.smtp_idle_timeout_ms, 300'000u);  // RFC 5321 4.5.3.2.7
  EXPECT_EQ(defaults->limits.smtp_command_timeout_ms, 60'000u);
  EXPECT_EQ(defaults->limits.smtp_min_data_rate, 1024u);
  EXPECT_EQ(defaults->limits.smtp_junk_command_limit, 100u);
  EXPECT_EQ(defaults->limits.max_connections_per_client, 100u);
  EXPECT_EQ(defaults->limits.idle_timeout_ms, 60'000u);  // HTTP keeps its own

  auto set = load(std::string(kMinimal) +
                  "limits:\n  smtp_idle_timeout: 10m\n  smtp_command_timeout: 30s\n"
                  "  smtp_min_data_rate: 4KB\n  smtp_junk_command_limit: 20\n"
                  "  max_connections_per_client: 8\n");
  ASSERT_TRUE(set.ok()) << set.error().message;
  EXPECT_EQ(set->limits.smtp_idle_timeout_ms, 600'000u);
  EXPECT_EQ(set->limits.smtp_command_timeout_ms, 30'000u);
  EXPECT_EQ(set->limits.smtp_min_data_rate, 4096u);
  EXPECT_EQ(set->limits.smtp_junk_command_limit, 20u);
  EXPECT_EQ(set->limits.max_connections_per_client, 8u);

  std::string errors = errors_of(std::string(kMinimal) +
                                 "limits:\n  smtp_idle_timeout: 0s\n  smtp_command_timeout: 5\n"
                                 "  smtp_min_data_rate: 0\n  smtp_junk_command_limit: 0\n"
                                 "  max_connections_per_client: 0\n");
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:5:22: limits.smtp_idle_timeout: must be longer "
                              "than zero"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:6:25: limits.smtp_command_timeout: is not a "
                              "duration: write a number with a unit, e.g. 250ms, 30s, 5m, 2h, 3d"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:7:23: limits.smtp_min_data_rate: is not a size: "
                              "write bytes (26214400) or e.g. 512KB, 25MB, 1GB (1024-based)"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:8:28: limits.smtp_junk_command_limit: must be a "
                              "whole number from 1 to 1000000"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:9:31: limits.max_connections_per_client: must "
                              "be a whole number from 1 to 1000000"));
}

TEST_F(ConfigTest, LoadsFromFile) {
  std::string path = write("etc/mailcar.yaml", std::string(kMinimal) + "spool: {path: q}\n");
  auto config = load_config_file(path, test_env);
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->file, path);
  EXPECT_EQ(config->spool->path, (dir_ / "etc/q").string());

  auto missing = load_config_file((dir_ / "nope.yaml").string(), test_env);
  ASSERT_FALSE(missing.ok());
  EXPECT_EQ(missing.error().message,
            "cannot read " + (dir_ / "nope.yaml").string() + ": No such file or directory");
}

namespace {

constexpr const char* kWithRateLimit =
    "services:\n  email:\n    host: x\n    from_name: \"Example App\n    rate_limit: 1/day\n";

}  // namespace

TEST_F(ConfigTest, UnterminatedQuoteIsAnErrorAtTheQuote) {
  // The issue's case: the quote swallows the next key (yaml-cpp accepts it to the end of file).
  EXPECT_EQ(errors_of(kWithRateLimit),
            "DIR/mailcar.yaml:4:16: unterminated quote: the value that starts here has no "
            "closing \" before the end of the file");
  // Closed by a later quote: the lines between look like keys.
  EXPECT_THAT(errors_of("services:\n  email:\n    host: x\n    from_name: 'Example App\n"
                        "    rate_limit: 1/day\n    reply_to_name: 'Support'\n"),
              HasLine("DIR/mailcar.yaml:4:16: unterminated quote: the value that starts here "
                      "runs on to line 5, which looks like a key; is its closing ' missing?"));
  // In a list item, with an anchor in front, and in a flow sequence.
  EXPECT_EQ(errors_of("services:\n  email:\n    host: &h \"x\n    port: 25\n"),
            "DIR/mailcar.yaml:3:14: unterminated quote: the value that starts here has no "
            "closing \" before the end of the file");
  EXPECT_EQ(errors_of(std::string(kMinimal) + "roles:\n  r:\n    senders:\n      - \"a@x\n"
                                              "      - b@x\n"),
            "DIR/mailcar.yaml:7:9: unterminated quote: the value that starts here has no "
            "closing \" before the end of the file");
}

TEST_F(ConfigTest, MultiLineQuotedValuesStillWork) {
  auto config = load(
      "services:\n  email:\n    host: x\n"
      "    from_name: \"Example\n      App \\\"quoted\\\" \\\\\"\n"
      "    reply_to_name: 'It''s\n      us'\n"
      "    from_email: \"app@example.com\"  # a comment with \" in it\n"
      "roles:\n  r: {senders: [\"*@example.com\", '*@x.example']}\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  EXPECT_EQ(config->services[0].from_name, "Example App \"quoted\" \\");
  EXPECT_EQ(config->services[0].reply_to_name, "It's us");
  EXPECT_EQ(config->services[0].from_email, "app@example.com");
  ASSERT_TRUE(config->roles[0].senders.has_value());
  EXPECT_EQ(config->roles[0].senders->size(), 2u);
}

TEST_F(ConfigTest, InvalidUtf8IsAnErrorWithPosition) {
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    from_name: Caf\xE9\n"),
            "DIR/mailcar.yaml:4:19: invalid UTF-8 (the file must be UTF-8 encoded)");
  EXPECT_EQ(errors_of("\xFF\xFE"
                      "s"),
            "DIR/mailcar.yaml:1:1: invalid UTF-8 (the file must be "
            "UTF-8 encoded)");
  auto utf8 =
      load("\xEF\xBB\xBFservices:\n  email:\n    host: x\n    from_name: \"Caf\xC3\xA9\"\n");
  ASSERT_TRUE(utf8.ok()) << utf8.error().message;
  EXPECT_EQ(utf8->services[0].from_name, "Caf\xC3\xA9");
  // A BOM shifts nothing: a quote error is still reported where the quote is.
  EXPECT_EQ(errors_of("\xEF\xBB\xBFservices:\n  email:\n    host: x\n    from_name: \"A\n"),
            "DIR/mailcar.yaml:4:16: unterminated quote: the value that starts here has no "
            "closing \" before the end of the file");
}

TEST_F(ConfigTest, FilesOverTheLimitAreRefusedNamingFileAndLimit) {
  std::string big = write("big.yaml", std::string(kMinimal) + "#" + std::string(1024 * 1024, 'x'));
  auto result = load_config_file(big, test_env);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.error().message,
            "cannot read " + big + ": larger than the limit of 1048576 bytes");
  write("secret", std::string(64 * 1024 + 1, 'p'));
  EXPECT_EQ(errors_of("services:\n  email:\n    host: x\n    username: u\n"
                      "    password_file: secret\n"),
            "DIR/mailcar.yaml:5:20: services.email.password_file: cannot read DIR/secret: "
            "larger than the limit of 65536 bytes");
}

// ---- shared_state (issue 11) ------------------------------------------------------------

TEST_F(ConfigTest, SharedStateDefaultsAndKeys) {
  auto plain = load(kMinimal);
  ASSERT_TRUE(plain.ok()) << plain.error().message;
  EXPECT_FALSE(plain->shared_state.has_value());

  auto config = load(std::string(kMinimal) + "shared_state:\n  redis: redis://10.0.0.5/1\n");
  ASSERT_TRUE(config.ok()) << config.error().message;
  ASSERT_TRUE(config->shared_state.has_value());
  const SharedStateConfig& s = *config->shared_state;
  EXPECT_EQ(s.host, "10.0.0.5");
  EXPECT_EQ(s.port, 6379);
  EXPECT_EQ(s.db, 1u);
  EXPECT_EQ(s.key_prefix, "mailcar:");
  EXPECT_EQ(s.on_error, SharedStateOnError::Local);
  EXPECT_EQ(s.timeout_ms, 1000u);

  std::string secret = write("redis-pw", "from-file\n");
  auto full = load(std::string(kMinimal) + "shared_state:\n  redis: unix:///run/r.sock\n" +
                   "  password_file: " + secret +
                   "\n  key_prefix: \"prod:\"\n  on_error: refuse\n  timeout: 250ms\n");
  ASSERT_TRUE(full.ok()) << full.error().message;
  EXPECT_EQ(full->shared_state->unix_path, "/run/r.sock");
  EXPECT_EQ(full->shared_state->password, "from-file");
  EXPECT_EQ(full->shared_state->key_prefix, "prod:");
  EXPECT_EQ(full->shared_state->on_error, SharedStateOnError::Refuse);
  EXPECT_EQ(full->shared_state->timeout_ms, 250u);
}

TEST_F(ConfigTest, SharedStateErrorsNeverShowThePassword) {
  std::string errors =
      errors_of(std::string(kMinimal) +
                "shared_state:\n  redis: redis://:hunter2@h:70000\n  on_error: maybe\n"
                "  key_prefix: \"a{b}\"\n  password: other\n  bogus: 1\n");
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:5:10: shared_state.redis: has a port outside "
                              "1..65535"));
  EXPECT_THAT(errors, HasLine("DIR/mailcar.yaml:6:13: shared_state.on_error: must be local or "
                              "refuse"));
  EXPECT_NE(errors.find("shared_state.key_prefix"), std::string::npos) << errors;
  EXPECT_NE(errors.find("shared_state.password: the redis URL has a password already"),
            std::string::npos)
      << errors;
  EXPECT_NE(errors.find("shared_state.bogus: unknown key"), std::string::npos) << errors;
  EXPECT_EQ(errors.find("hunter2"), std::string::npos) << errors;
  EXPECT_NE(errors_of(std::string(kMinimal) + "shared_state:\n  key_prefix: x\n")
                .find("shared_state.redis: is required"),
            std::string::npos);
}
