// A deliberately small, independent MIME reader for round-trip tests: splits headers and
// body, unfolds, decodes RFC 2047 words, RFC 2231 parameters, quoted-printable and base64,
// and walks multipart boundaries. Test-only; it trusts nothing about the builder's choices.
#pragma once

#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mailcar/text.hpp"

namespace mailcar::testing {

struct Part {
  std::vector<std::pair<std::string, std::string>> headers;  // name, unfolded value
  std::string body;                                          // raw (still encoded)
  std::vector<Part> children;                                // for multipart/*

  std::optional<std::string> header(std::string_view name) const {
    for (const auto& [n, v] : headers) {
      if (text::iequals_ascii(n, name)) return v;
    }
    return std::nullopt;
  }
  int count(std::string_view name) const {
    int c = 0;
    for (const auto& h : headers) c += text::iequals_ascii(h.first, name) ? 1 : 0;
    return c;
  }
};

inline int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  return -1;
}

inline std::string decode_qp(std::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '=') {
      if (s.substr(i + 1, 2) == "\r\n") {
        i += 2;
        continue;
      }
      if (i + 2 < s.size()) {
        int hi = hex_value(s[i + 1]), lo = hex_value(s[i + 2]);
        if (hi < 0 || lo < 0) {
          ADD_FAILURE() << "bad QP escape at " << i;
          return out;
        }
        out.push_back(static_cast<char>(hi * 16 + lo));
        i += 2;
        continue;
      }
      ADD_FAILURE() << "truncated QP escape";
      return out;
    }
    out.push_back(s[i]);
  }
  return out;
}

// Decodes RFC 2047 encoded words (B and Q); white space between two adjacent words is dropped.
inline std::string decode_2047(std::string_view s) {
  std::string out;
  std::string pending_ws;
  bool last_was_word = false;
  size_t i = 0;
  while (i < s.size()) {
    if (s.substr(i, 2) == "=?") {
      size_t q1 = s.find('?', i + 2);
      size_t q2 = q1 == std::string_view::npos ? q1 : s.find('?', q1 + 1);
      size_t end = q2 == std::string_view::npos ? q2 : s.find("?=", q2 + 1);
      if (end != std::string_view::npos) {
        std::string_view enc = s.substr(q1 + 1, q2 - q1 - 1);
        std::string_view payload = s.substr(q2 + 1, end - q2 - 1);
        std::string decoded;
        if (enc == "B" || enc == "b") {
          auto d = text::base64_decode(payload);
          EXPECT_TRUE(d.has_value()) << "bad base64 in encoded word";
          decoded = d.value_or("");
        } else {
          std::string p(payload);
          for (char& c : p) c = c == '_' ? ' ' : c;
          decoded = decode_qp(p);
        }
        EXPECT_LE(end + 2 - i, 75u) << "encoded word over 75 chars";
        if (!last_was_word) out += pending_ws;
        pending_ws.clear();
        out += decoded;
        last_was_word = true;
        i = end + 2;
        continue;
      }
    }
    if (s[i] == ' ' || s[i] == '\t') {
      pending_ws.push_back(s[i]);
    } else {
      out += pending_ws;
      pending_ws.clear();
      out.push_back(s[i]);
      last_was_word = false;
    }
    ++i;
  }
  return out + pending_ws;
}

inline std::string trim_ws(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return std::string(s);
}

// Value of parameter `name` in a structured header value, with RFC 2231 continuations and
// charset'lang'percent decoding; quoted strings unescaped.
inline std::optional<std::string> header_param(std::string_view value, std::string_view name) {
  std::vector<std::pair<std::string, std::string>> params;
  size_t i = value.find(';');
  while (i != std::string_view::npos && i < value.size()) {
    ++i;
    while (i < value.size() && (value[i] == ' ' || value[i] == '\t')) ++i;
    size_t eq = value.find('=', i);
    if (eq == std::string_view::npos) break;
    std::string key = text::lower_ascii(trim_ws(value.substr(i, eq - i)));
    size_t j = eq + 1;
    std::string v;
    if (j < value.size() && value[j] == '"') {
      ++j;
      while (j < value.size() && value[j] != '"') {
        if (value[j] == '\\') ++j;
        if (j < value.size()) v.push_back(value[j]);
        ++j;
      }
      ++j;
    } else {
      while (j < value.size() && value[j] != ';') v.push_back(value[j++]);
      v = trim_ws(v);
    }
    params.emplace_back(key, v);
    i = value.find(';', j);
  }
  std::string lname = text::lower_ascii(name);
  for (const auto& [k, v] : params) {
    if (k == lname) return v;
  }
  // RFC 2231: name* or name*0*, name*1*, ...
  std::string joined;
  bool found = false;
  for (int n = -1; n < 100; ++n) {
    std::string key = n < 0 ? lname + "*" : lname + "*" + std::to_string(n) + "*";
    bool hit = false;
    for (const auto& [k, v] : params) {
      if (k == key) {
        joined += v;
        hit = found = true;
      }
    }
    if (n >= 0 && !hit) break;
  }
  if (!found) return std::nullopt;
  size_t q1 = joined.find('\''), q2 = joined.find('\'', q1 + 1);
  EXPECT_NE(q2, std::string::npos) << "RFC 2231 value without charset'lang'";
  std::string_view enc = std::string_view(joined).substr(q2 + 1);
  std::string out;
  for (size_t k = 0; k < enc.size(); ++k) {
    if (enc[k] == '%' && k + 2 < enc.size()) {
      out.push_back(static_cast<char>(hex_value(enc[k + 1]) * 16 + hex_value(enc[k + 2])));
      k += 2;
    } else {
      out.push_back(enc[k]);
    }
  }
  return out;
}

inline Part parse_entity(std::string_view data) {
  Part p;
  size_t pos = 0;
  while (pos < data.size()) {
    size_t eol = data.find("\r\n", pos);
    if (eol == std::string_view::npos) eol = data.size();
    std::string_view line = data.substr(pos, eol - pos);
    pos = eol + 2;
    if (line.empty()) break;
    if (line.front() == ' ' || line.front() == '\t') {
      if (p.headers.empty()) {
        ADD_FAILURE() << "continuation line without field";
        continue;
      }
      p.headers.back().second += std::string(line);
      continue;
    }
    size_t colon = line.find(':');
    if (colon == std::string_view::npos) {
      ADD_FAILURE() << "header line without colon: " << line;
      continue;
    }
    p.headers.emplace_back(std::string(line.substr(0, colon)), std::string(line.substr(colon + 1)));
  }
  for (auto& h : p.headers) h.second = trim_ws(h.second);
  p.body = pos < data.size() ? std::string(data.substr(pos)) : std::string();

  std::string ct = text::lower_ascii(p.header("Content-Type").value_or("text/plain"));
  if (ct.starts_with("multipart/")) {
    auto boundary = header_param(p.header("Content-Type").value_or(""), "boundary");
    if (!boundary) {
      ADD_FAILURE() << "multipart without boundary";
      return p;
    }
    std::string delim = "\r\n--" + *boundary;
    std::string body = "\r\n" + p.body;
    size_t at = body.find(delim);
    while (at != std::string::npos) {
      size_t line_end = body.find("\r\n", at + delim.size());
      std::string_view rest = std::string_view(body).substr(at + delim.size(), 2);
      if (rest == "--") break;  // close delimiter
      if (line_end == std::string::npos) {
        ADD_FAILURE() << "delimiter without line end";
        break;
      }
      size_t next = body.find(delim, line_end);
      if (next == std::string::npos) {
        ADD_FAILURE() << "part without closing delimiter";
        break;
      }
      p.children.push_back(
          parse_entity(std::string_view(body).substr(line_end + 2, next - line_end - 2)));
      at = next;
    }
    if (at == std::string::npos) ADD_FAILURE() << "no close delimiter";
  }
  return p;
}

// Decoded body of a leaf part.
inline std::string decoded_body(const Part& p) {
  std::string cte = text::lower_ascii(p.header("Content-Transfer-Encoding").value_or("7bit"));
  if (cte == "base64") {
    auto d = text::base64_decode(p.body);
    EXPECT_TRUE(d.has_value()) << "bad base64 body";
    return d.value_or("");
  }
  if (cte == "quoted-printable") return decode_qp(p.body);
  return p.body;
}

inline std::string content_type_of(const Part& p) {
  std::string ct = p.header("Content-Type").value_or("text/plain");
  return text::lower_ascii(trim_ws(ct.substr(0, ct.find(';'))));
}

}  // namespace mailcar::testing
