#include "http/response.hpp"

#include <utility>

#include "mailcar/log.hpp"

namespace mailcar::http {

std::optional<std::string_view> HttpResponse::header(std::string_view name) const {
  for (const auto& [key, value] : headers) {
    if (key == name) return std::string_view(value);
  }
  return std::nullopt;
}

const char* reason_phrase(int status) {
  switch (status) {
    case 100:
      return "Continue";
    case 200:
      return "OK";
    case 202:
      return "Accepted";
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 408:
      return "Request Timeout";
    case 409:
      return "Conflict";
    case 413:
      return "Payload Too Large";
    case 414:
      return "URI Too Long";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 429:
      return "Too Many Requests";
    case 431:
      return "Request Header Fields Too Large";
    case 500:
      return "Internal Server Error";
    case 503:
      return "Service Unavailable";
    default:
      return "Unknown";
  }
}

std::string serialize_response(const HttpResponse& response, bool keep_alive) {
  std::string out;
  out.reserve(160 + response.body.size());
  out.append("HTTP/1.1 ");
  out.append(std::to_string(response.status));
  out.push_back(' ');
  out.append(reason_phrase(response.status));
  out.append("\r\nContent-Type: ");
  out.append(response.content_type);
  out.append("\r\nContent-Length: ");
  out.append(std::to_string(response.body.size()));
  out.append("\r\n");
  for (const auto& [name, value] : response.headers) {
    out.append(name);
    out.append(": ");
    out.append(value);
    out.append("\r\n");
  }
  if (!keep_alive) out.append("Connection: close\r\n");
  out.append("\r\n");
  out.append(response.body);
  return out;
}

HttpResponse error_response(int status, std::string_view message, std::string_view context_json) {
  HttpResponse r;
  r.status = status;
  std::string code = std::to_string(status);
  r.body.reserve(96 + message.size() + context_json.size());
  r.body.append("{\"error\":{\"code\":");
  r.body.append(code);
  r.body.append(",\"message\":");
  log::append_json_string(r.body, message);
  r.body.append(",\"status_code\":");
  r.body.append(code);
  r.body.append(",\"context\":");
  r.body.append(context_json);
  r.body.append("}}");
  return r;
}

std::string field_context(std::string_view field) {
  std::string out = "{\"field\":";
  log::append_json_string(out, field);
  out.push_back('}');
  return out;
}

HttpResponse json_response(int status, std::string body) {
  HttpResponse r;
  r.status = status;
  r.body = std::move(body);
  return r;
}

HttpResponse method_not_allowed(const char* allow) {
  auto r = error_response(405, "Method not allowed.");
  r.headers.emplace_back("Allow", allow);
  return r;
}

}  // namespace mailcar::http
