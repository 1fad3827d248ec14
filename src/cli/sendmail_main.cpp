// The sendmail command's glue: where the listener is, standard input, the submission and what
// the caller is told (one line on stderr, a sysexits status).
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "cli/listen_peek.hpp"
#include "cli/smtp_submit.hpp"
#include "config/config_internal.hpp"
#include "mailcar/sendmail.hpp"

namespace mailcar::sendmail {
namespace {

constexpr size_t kMaxInputBytes = 256u * 1024 * 1024;
constexpr const char* kDefaultConfig = "/etc/mailcar/mailcar.yaml";

int fail(Exit code, const std::string& why) {
  std::fprintf(stderr, "sendmail: %s\n", why.c_str());
  return static_cast<int>(code);
}

std::string env_or_empty(EnvLookup env, const char* name) {
  return env(name).value_or(std::string());
}

// listen.smtp of the first configuration that can be read: the explicit one, else the default.
std::optional<Target> from_config(const std::string& explicit_file, EnvLookup env) {
  std::string file = explicit_file.empty() ? env_or_empty(env, "MAILCAR_CONFIG") : explicit_file;
  if (file.empty()) file = kDefaultConfig;
  auto section = cli::peek_listen(file, env);
  if (!section) return std::nullopt;  // unreadable for this user, or broken: fall back
  if (!section->smtp) {
    return Target{*parse_listen_address("127.0.0.1:2525"), file + " has no listen.smtp"};
  }
  return Target{cli::reachable(*section->smtp), "listen.smtp of " + file};
}

// Reads standard input until the end of the message, within kMaxInputBytes.
Result<std::string> read_stdin(bool ignore_dots) {
  MessageCollector collector(ignore_dots, kMaxInputBytes);
  std::string buffer(64 * 1024, '\0');
  for (;;) {
    ssize_t n = ::read(STDIN_FILENO, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return make_error(std::string("reading standard input: ") + std::strerror(errno));
    auto status = n == 0 ? collector.finish()
                         : collector.feed(std::string_view(buffer.data(), static_cast<size_t>(n)));
    if (status == MessageCollector::Status::Done) return collector.take();
    if (status == MessageCollector::Status::TooLarge) {
      return make_error("the message is larger than " + std::to_string(kMaxInputBytes >> 20) +
                        " MiB");
    }
  }
}

// One line for stderr: the reply mailcar gave, and who was refused.
std::string describe(const DeliveryResult& r) {
  std::string text = r.message;
  if (r.smtp_code) {
    std::string reply = std::to_string(*r.smtp_code) + " " + r.smtp_reply;
    text = r.message == r.smtp_reply ? reply : r.message + ": " + reply;
  }
  for (const RecipientOutcome& rej : r.rejected) {
    text +=
        "; " + rej.address + " refused: " + std::to_string(rej.smtp_code) + " " + rej.smtp_reply;
  }
  if (r.status == DeliveryStatus::Sent && !r.rejected.empty()) {
    text = "sent to " + std::to_string(r.accepted.size()) + " recipient(s) only" + text;
  }
  for (char& c : text) {
    if (c == '\n' || c == '\r') c = ' ';
  }
  return text;
}

}  // namespace

Result<Target> resolve_target(const std::string& config_file, EnvLookup env) {
  if (auto direct = env("MAILCAR_SMTP"); direct && !direct->empty()) {
    auto address = config_detail::parse_listen_address_explained(*direct);
    if (!address) return make_error("MAILCAR_SMTP=" + *direct + ": " + address.error().message);
    return Target{cli::reachable(*address), "MAILCAR_SMTP"};
  }
  if (auto target = from_config(config_file, env)) return *target;
  if (auto listen = env("MAILCAR_SMTP_LISTEN"); listen && !listen->empty()) {
    if (auto address = parse_listen_address(*listen)) {
      return Target{cli::reachable(*address), "MAILCAR_SMTP_LISTEN"};
    }
  }
  return Target{*parse_listen_address("127.0.0.1:2525"), "the default"};
}

int sendmail_main(const std::vector<std::string>& args, const std::string& config_file) {
  auto options = parse_arguments(args);
  if (!options) return fail(Exit::Usage, options.error().message);
  auto target = resolve_target(config_file, process_env);
  if (!target) return fail(Exit::Usage, target.error().message);
  auto raw = read_stdin(options->ignore_dots);
  if (!raw) return fail(Exit::DataError, raw.error().message);
  auto message = prepare_message(std::move(raw).value(), *options);
  if (!message) return fail(Exit::DataError, message.error().message);

  cli::SubmitSettings settings;
  settings.target = target->address;
  settings.username = env_or_empty(process_env, "MAILCAR_SMTP_USERNAME");
  settings.password = env_or_empty(process_env, "MAILCAR_SMTP_PASSWORD");
  settings.ehlo_name = config_detail::machine_hostname();
  if (auto t = process_env("MAILCAR_SMTP_TIMEOUT"); t && !t->empty()) {
    auto ms = parse_duration_ms(*t);
    if (!ms || *ms == 0 || *ms > 3'600'000)
      return fail(Exit::Usage, "MAILCAR_SMTP_TIMEOUT=" + *t + ": not a duration up to 1h");
    settings.connect_timeout_ms = settings.reply_timeout_ms = settings.final_reply_timeout_ms =
        static_cast<int>(*ms);
  }
  cli::SubmitOutcome outcome = cli::submit(*message, settings);
  Exit code = exit_for(outcome.result, outcome.connected);
  if (code == Exit::Ok) return 0;
  std::string why = describe(outcome.result);
  if (!outcome.connected) why += " (address from " + target->note + ")";
  return fail(code, why);
}

bool is_sendmail_invocation(int argc, char** argv, std::vector<std::string>& args,
                            std::string& config_file) {
  if (argc < 1) return false;
  std::string_view self = argv[0];
  if (size_t slash = self.rfind('/'); slash != std::string_view::npos)
    self.remove_prefix(slash + 1);
  int first = 1;
  if (self != "sendmail") {
    std::string_view a = argc > 1 ? argv[1] : "";
    if ((a == "-c" || a == "--config") && argc > 3) {
      config_file = argv[2];
      first = 3;
    } else if (a.rfind("--config=", 0) == 0 && argc > 2) {
      config_file = a.substr(9);
      first = 2;
    }
    if (first >= argc || std::string_view(argv[first]) != "sendmail") return false;
    ++first;
  }
  args.assign(argv + first, argv + argc);
  return true;
}

}  // namespace mailcar::sendmail
