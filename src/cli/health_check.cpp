// `mailcar --health-check` (SPEC §13): a container's HEALTHCHECK without curl.
#include <cstdio>
#include <string>

#include "cli/blocking_socket.hpp"
#include "cli/listen_peek.hpp"
#include "mailcar/sendmail.hpp"

namespace mailcar {
namespace {

constexpr int kTimeoutMs = 3'000;
constexpr size_t kMaxStatusLine = 1024;

int unhealthy(const std::string& why) {
  std::fprintf(stderr, "mailcar: health check failed: %s\n", why.c_str());
  return 1;
}

Result<ListenAddress> http_listener(const std::string& config_file) {
  std::optional<ListenAddress> http;
  if (config_file.empty()) {
    auto cfg = config_from_environment();
    if (!cfg) return cfg.error();
    http = cfg->listen_http;
  } else {
    auto section = cli::peek_listen(config_file, process_env);
    if (!section) return section.error();
    http = section->http;
  }
  if (!http) return make_error("no HTTP listener is configured (listen.http)");
  return cli::reachable(*http);
}

}  // namespace

int health_check_main(const std::string& config_file) {
  auto target = http_listener(config_file);
  if (!target) return unhealthy(target.error().message);
  auto socket = cli::BlockingSocket::connect(target->host, target->port, kTimeoutMs);
  if (!socket) return unhealthy(target->text + ": " + socket.error().message);
  std::string request =
      "GET /health HTTP/1.1\r\nHost: " + target->text + "\r\nConnection: close\r\n\r\n";
  if (socket->send_all(request, kTimeoutMs) != cli::BlockingSocket::Status::Ok) {
    return unhealthy(target->text + ": could not send the request");
  }
  std::string head;
  while (head.find("\r\n") == std::string::npos && head.size() < kMaxStatusLine) {
    auto received = socket->receive(kMaxStatusLine - head.size(), kTimeoutMs);
    if (received.status != cli::BlockingSocket::Status::Ok) {
      return unhealthy(target->text + (received.status == cli::BlockingSocket::Status::TimedOut
                                           ? ": no answer within 3 s"
                                           : ": the connection closed without an answer"));
    }
    head += received.data;
  }
  std::string status_line = head.substr(0, head.find("\r\n"));
  if (status_line.rfind("HTTP/1.", 0) != 0 || status_line.size() < 12) {
    return unhealthy(target->text + ": not an HTTP answer");
  }
  if (status_line.compare(9, 3, "200") != 0) {
    return unhealthy(target->text + " answered " + status_line.substr(9));
  }
  return 0;
}

}  // namespace mailcar
