// One HTTP(S) exchange on the loop: [proxy CONNECT] -> [TLS] -> request -> response.
// Everything runs under one timer (request.timeout_ms). The Exchange lives as long as the
// caller's handle; every callback holds it weakly, so a dropped handle silences them all.
#include <utility>

#include "mailcar/http_client.hpp"
#include "mailcar/net.hpp"
#include "mailcar/text.hpp"

namespace mailcar::http_client {
namespace {

bool has_line_break(std::string_view s) {
  return s.find_first_of("\r\n") != std::string_view::npos;
}

ErrorKind error_for(const net::NetError& e) {
  switch (e.kind) {
    case net::NetErrorKind::Certificate:
      return ErrorKind::Certificate;
    case net::NetErrorKind::Tls:
      return ErrorKind::Tls;
    case net::NetErrorKind::TimedOut:
      return ErrorKind::TimedOut;
    case net::NetErrorKind::Closed:
      return ErrorKind::Protocol;
    case net::NetErrorKind::None:
    case net::NetErrorKind::Resolve:
    case net::NetErrorKind::Refused:
    case net::NetErrorKind::Io:
      break;
  }
  return ErrorKind::Connect;
}

class Exchange : public std::enable_shared_from_this<Exchange> {
 public:
  Exchange(uv_loop_t* loop, Request request, ResultFn done)
      : loop_(loop), request_(std::move(request)), done_(std::move(done)), timer_(loop) {}

  void start() {
    auto url = parse_url(request_.url);
    if (!url) return finish_later({ErrorKind::BadUrl, "the URL does not parse", {}});
    url_ = std::move(*url);
    for (const auto& [name, value] : request_.headers) {
      if (has_line_break(name) || has_line_break(value) || name.empty()) {
        return finish_later({ErrorKind::BadUrl, "a request header holds a line break", {}});
      }
    }
    ProxyChoice choice =
        proxy_for(url_, request_.proxy_env.value_or(ProxyEnvironment::from_process()));
    if (!choice.error.empty()) return finish_later({ErrorKind::BadUrl, choice.error, {}});
    proxy_ = std::move(choice.proxy);
    timer_.start(request_.timeout_ms, [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->finish({ErrorKind::TimedOut, "timed out", {}});
    });
    const Url& first_hop = proxy_ ? *proxy_ : url_;
    net::connect_tcp(loop_, first_hop.host, first_hop.port, request_.timeout_ms,
                     [weak = weak_from_this()](net::StreamPtr stream, const net::NetError& e) {
                       auto self = weak.lock();
                       if (!self || self->finished_) {
                         if (stream) stream->abort();
                         return;
                       }
                       self->on_connected(std::move(stream), e);
                     });
  }

  void cancel() {
    finished_ = true;
    done_ = nullptr;
    timer_.stop();
    if (stream_) {
      stream_->on_close(nullptr);
      stream_->abort();
    }
  }

 private:
  void on_connected(net::StreamPtr stream, const net::NetError& e) {
    if (!stream || e.kind != net::NetErrorKind::None) {
      const char* hop = proxy_ ? "proxy " : "";
      return finish({error_for(e), std::string(hop) + "connect: " + e.detail, {}});
    }
    stream_ = std::move(stream);
    stream_->set_line_delivery(false);
    stream_->on_close([weak = weak_from_this()](const net::NetError& why) {
      if (auto self = weak.lock()) self->on_closed(why);
    });
    stream_->on_data([weak = weak_from_this()](std::string_view bytes) {
      if (auto self = weak.lock()) self->on_bytes(bytes);
    });
    if (proxy_) return send_connect();
    after_tunnel();
  }

  void send_connect() {
    in_connect_ = true;
    parser_ = std::make_unique<ResponseParser>(0, true);
    std::string line =
        "CONNECT " + host_port(url_) + " HTTP/1.1\r\nHost: " + host_port(url_) + "\r\n";
    if (proxy_->has_userinfo) {
      line += "Proxy-Authorization: Basic " +
              text::base64_encode(proxy_->user + ":" + proxy_->password) + "\r\n";
    }
    stream_->write(line + "\r\n");
  }

  void after_tunnel() {
    in_connect_ = false;
    if (!url_.https) return send_request();
    net::TlsClientOptions tls;
    tls.verify = request_.verify;
    tls.ca_file = request_.ca_file;
    tls.server_name = url_.host;
    stream_->start_tls_client(tls, [weak = weak_from_this()](const net::NetError& e) {
      auto self = weak.lock();
      if (!self || self->finished_) return;
      if (e.kind != net::NetErrorKind::None) {
        return self->finish({error_for(e), "TLS: " + e.detail, {}});
      }
      self->send_request();
    });
  }

  void send_request() {
    parser_ =
        std::make_unique<ResponseParser>(request_.max_response_bytes, request_.method == "HEAD");
    std::string head = request_.method + " " + url_.target + " HTTP/1.1\r\nHost: ";
    const bool default_port = url_.port == (url_.https ? 443 : 80);
    head += default_port
                ? (url_.host.find(':') != std::string::npos ? "[" + url_.host + "]" : url_.host)
                : host_port(url_);
    head += "\r\n";
    for (const auto& [name, value] : request_.headers) head += name + ": " + value + "\r\n";
    if (!request_.body.empty() || request_.method == "POST" || request_.method == "PUT") {
      head += "Content-Length: " + std::to_string(request_.body.size()) + "\r\n";
    }
    head += "Connection: close\r\n\r\n";
    head += request_.body;
    stream_->write(std::move(head));
  }

  void on_bytes(std::string_view bytes) {
    if (finished_ || !parser_) return;
    ResponseParser::Status status = parser_->feed(bytes);
    if (status == ResponseParser::Status::NeedMore) return;
    if (status == ResponseParser::Status::Error) {
      return finish({ErrorKind::Protocol, parser_->error(), {}});
    }
    if (!in_connect_) return finish({ErrorKind::None, {}, parser_->take_response()});
    const int code = parser_->response().status;
    parser_.reset();
    if (code < 200 || code > 299) {
      return finish(
          {ErrorKind::Proxy, "proxy refused CONNECT with status " + std::to_string(code), {}});
    }
    after_tunnel();
  }

  void on_closed(const net::NetError& why) {
    if (finished_) return;
    if (parser_ && !in_connect_ && why.kind == net::NetErrorKind::Closed) {
      if (parser_->finish() == ResponseParser::Status::Done) {
        return finish({ErrorKind::None, {}, parser_->take_response()});
      }
      return finish({ErrorKind::Protocol, parser_->error(), {}});
    }
    finish({error_for(why), "connection lost: " + why.detail, {}});
  }

  void finish_later(Result result) {
    timer_.start(0, [weak = weak_from_this(), result = std::move(result)]() mutable {
      if (auto self = weak.lock()) self->finish(std::move(result));
    });
  }

  void finish(Result result) {
    if (finished_) return;
    auto keep = shared_from_this();  // `done` may drop the caller's handle
    finished_ = true;
    timer_.stop();
    if (stream_) {
      stream_->on_close(nullptr);
      stream_->abort();
    }
    auto done = std::move(done_);
    done_ = nullptr;
    if (done) done(std::move(result));  // may destroy this Exchange (via the handle)
  }

  uv_loop_t* loop_;
  Request request_;
  ResultFn done_;
  net::Timer timer_;
  Url url_;
  std::optional<Url> proxy_;
  net::StreamPtr stream_;
  std::unique_ptr<ResponseParser> parser_;
  bool in_connect_ = false;
  bool finished_ = false;
};

class Handle : public Cancel {
 public:
  explicit Handle(std::shared_ptr<Exchange> exchange) : exchange_(std::move(exchange)) {}
  ~Handle() override { exchange_->cancel(); }

 private:
  std::shared_ptr<Exchange> exchange_;
};

}  // namespace

const char* error_kind_name(ErrorKind kind) {
  switch (kind) {
    case ErrorKind::None:
      return "none";
    case ErrorKind::BadUrl:
      return "bad_url";
    case ErrorKind::Connect:
      return "connect";
    case ErrorKind::Proxy:
      return "proxy";
    case ErrorKind::Certificate:
      return "certificate";
    case ErrorKind::Tls:
      return "tls";
    case ErrorKind::TimedOut:
      return "timed_out";
    case ErrorKind::Protocol:
      return "protocol";
  }
  return "unknown";
}

std::unique_ptr<Cancel> fetch(uv_loop_t* loop, Request request, ResultFn done) {
  auto exchange = std::make_shared<Exchange>(loop, std::move(request), std::move(done));
  exchange->start();
  return std::make_unique<Handle>(std::move(exchange));
}

}  // namespace mailcar::http_client
