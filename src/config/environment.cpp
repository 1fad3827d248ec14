// The zero-file container setup (SPEC §2): DreamFactory/Laravel MAIL_* variables define one
// service `email`, and one role `default` with full rights.
#include <arpa/inet.h>

#include <cstring>
#include <string>
#include <vector>

#include "config/config_internal.hpp"
#include "mailcar/config.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

bool is_loopback(const ListenAddress& address) {
  unsigned char bytes[sizeof(struct in6_addr)] = {};
  if (inet_pton(AF_INET, address.host.c_str(), bytes) == 1) return bytes[0] == 127;
  static constexpr unsigned char kV6Loopback[16] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
  if (inet_pton(AF_INET6, address.host.c_str(), bytes) == 1) {
    return std::memcmp(bytes, kV6Loopback, sizeof kV6Loopback) == 0;
  }
  return false;
}

class EnvironmentReader {
 public:
  explicit EnvironmentReader(EnvLookup env) : env_(env) {}

  std::optional<std::string> get(const char* name) const {
    if (env_ == nullptr) return std::nullopt;
    return env_(name);
  }

  // The variable's value with an empty value treated as unset.
  std::optional<std::string> nonempty(const char* name) const {
    auto value = get(name);
    if (value && value->empty()) return std::nullopt;
    return value;
  }

  void fail(const char* name, const std::string& what) {
    errors_.push_back(std::string("<environment>: ") + name + ": " + what);
  }

  bool failed() const { return !errors_.empty(); }

  Error error() const {
    std::string message;
    for (const auto& line : errors_) {
      if (!message.empty()) message += '\n';
      message += line;
    }
    return make_error(std::move(message));
  }

  // A listener address, its default when unset; empty or "off" disables it.
  std::optional<ListenAddress> listen(const char* name, const char* fallback) {
    auto value = get(name);
    std::string text = value ? *value : fallback;
    if (text.empty() || text == "off") return std::nullopt;
    auto parsed = config_detail::parse_listen_address_explained(text);
    if (!parsed) {
      fail(name, parsed.error().message);
      return std::nullopt;
    }
    return std::move(parsed).value();
  }

 private:
  EnvLookup env_;
  std::vector<std::string> errors_;
};

// MAIL_HOST, MAIL_ENCRYPTION (which sets the default port) and MAIL_PORT.
void read_upstream(EnvironmentReader& vars, ServiceConfig& service) {
  if (auto host = vars.nonempty("MAIL_HOST")) {
    service.host = *host;
  } else {
    vars.fail("MAIL_HOST", "is not set (it names the upstream SMTP server)");
  }
  std::string encryption = text::lower_ascii(vars.get("MAIL_ENCRYPTION").value_or("tls"));
  if (encryption == "tls" || encryption == "starttls") {
    service.encryption = Encryption::StartTls;
    service.port = 587;
  } else if (encryption == "ssl") {
    service.encryption = Encryption::Tls;
    service.port = 465;
  } else if (encryption.empty() || encryption == "null" || encryption == "none") {
    service.encryption = Encryption::None;
    service.port = 25;
  } else {
    vars.fail("MAIL_ENCRYPTION", "must be tls, starttls, ssl, none, null or empty");
  }
  if (auto port = vars.nonempty("MAIL_PORT")) {
    auto parsed = parse_listen_address("0.0.0.0:" + *port);  // reuses the strict port syntax
    if (parsed) {
      service.port = parsed->port;
    } else {
      vars.fail("MAIL_PORT", "must be a number from 1 to 65535");
    }
  }
}

// MAIL_USERNAME / MAIL_PASSWORD (both or neither), MAIL_FROM_ADDRESS and MAIL_FROM_NAME.
void read_account(EnvironmentReader& vars, ServiceConfig& service) {
  if (auto username = vars.nonempty("MAIL_USERNAME")) service.username = *username;
  if (auto password = vars.nonempty("MAIL_PASSWORD")) service.password = *password;
  if (service.password.empty() != service.username.empty()) {
    vars.fail(service.username.empty() ? "MAIL_USERNAME" : "MAIL_PASSWORD",
              "MAIL_USERNAME and MAIL_PASSWORD go together: set both or neither");
  }
  if (auto from = vars.nonempty("MAIL_FROM_ADDRESS")) {
    if (auto problem = config_detail::check_address(*from)) {
      vars.fail("MAIL_FROM_ADDRESS", "is not a valid address: it " + *problem);
    }
    service.from_email = *from;
  }
  if (auto name = vars.nonempty("MAIL_FROM_NAME")) {
    if (name->find_first_of(std::string_view("\r\n\0", 3)) != std::string::npos) {
      vars.fail("MAIL_FROM_NAME", "must not contain CR, LF or NUL");
    }
    service.from_name = *name;
  }
}

// The one role `default`, with full rights, and MAILCAR_API_KEY as its key.
void add_default_role(EnvironmentReader& vars, Config& config) {
  RoleConfig role;
  role.name = "default";
  role.services = std::nullopt;  // all services
  role.senders = std::vector<std::string>{"*"};
  config.roles.push_back(std::move(role));
  if (auto api_key = vars.get("MAILCAR_API_KEY")) {
    if (api_key->empty()) {
      vars.fail("MAILCAR_API_KEY", "is set but empty");
    } else {
      CredentialConfig credential;
      credential.api_key = *api_key;
      credential.role = "default";
      config.credentials.push_back(std::move(credential));
    }
  }
}

// The listeners, and the SMTP door's anonymous role (full rights: loopback only).
void read_listeners(EnvironmentReader& vars, Config& config) {
  config.listen_http = vars.listen("MAILCAR_HTTP_LISTEN", "127.0.0.1:2580");
  config.listen_smtp = vars.listen("MAILCAR_SMTP_LISTEN", "127.0.0.1:2525");
  if (config.listen_smtp && !is_loopback(*config.listen_smtp)) {
    vars.fail("MAILCAR_SMTP_LISTEN",
              "must be a loopback address in the zero-file setup (SMTP clients get full rights "
              "without AUTH); use a configuration file to listen elsewhere");
  }
  config.smtp.service = "email";
  config.smtp.anonymous_role = "default";
  config.smtp.hostname = config_detail::machine_hostname();
}

}  // namespace

Result<Config> config_from_environment(EnvLookup env) {
  EnvironmentReader vars(env);
  Config config;
  config.file = "<environment>";
  ServiceConfig service;
  service.name = "email";
  service.driver = ServiceDriver::Smtp;
  read_upstream(vars, service);
  read_account(vars, service);
  config.services.push_back(std::move(service));
  add_default_role(vars, config);
  read_listeners(vars, config);
  if (vars.failed()) return vars.error();
  return config;
}

}  // namespace mailcar
