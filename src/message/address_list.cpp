// RFC 5322 address-list parsing: a lexer (atoms, quoted strings, domain literals, specials;
// comments and folding white space skipped) and a recursive-descent parser over its tokens.
#include <string>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/text.hpp"
#include "message/char_class.hpp"

namespace mailcar {
namespace {

enum class TokenKind { Atom, Quoted, DomainLiteral, Special, End };

struct Token {
  TokenKind kind = TokenKind::End;
  std::string_view raw;   // as written (quotes and escapes included), in the lexer's input
  std::string unescaped;  // a quoted string's content
  char special = 0;
  bool space_before = false;
  std::string comment_before;  // text of the last comment in front of this token

  std::string_view value() const { return kind == TokenKind::Quoted ? unescaped : raw; }
};

class Lexer {
 public:
  explicit Lexer(std::string_view in) : in_(in) {}

  Result<std::vector<Token>> run() {
    std::vector<Token> tokens;
    tokens.reserve(8);  // "Name <local@example.com>" is 8 tokens with End: no regrowth
    Token pending;
    while (true) {
      auto skipped = skip_cfws(pending);
      if (!skipped) return skipped.error();
      if (pos_ >= in_.size()) break;
      auto c = static_cast<unsigned char>(in_[pos_]);
      if (c == '"') {
        auto r = quoted(pending);
        if (!r) return r.error();
      } else if (c == '[') {
        size_t end = in_.find(']', pos_);
        if (end == std::string_view::npos) return make_error("unterminated domain literal");
        pending.kind = TokenKind::DomainLiteral;
        pending.raw = in_.substr(pos_, end + 1 - pos_);
        for (char d : pending.raw.substr(1, pending.raw.size() - 2)) {
          auto u = static_cast<unsigned char>(d);
          if (u <= 32 || u == 127 || d == '[' || d == '\\') {
            return make_error("invalid character in domain literal");
          }
        }
        pos_ = end + 1;
      } else if (is_atext_utf8(c)) {
        size_t start = pos_;
        while (pos_ < in_.size() && is_atext_utf8(static_cast<unsigned char>(in_[pos_]))) ++pos_;
        pending.kind = TokenKind::Atom;
        pending.raw = in_.substr(start, pos_ - start);
      } else if (c == '<' || c == '>' || c == ':' || c == ';' || c == '@' || c == ',' || c == '.') {
        pending.kind = TokenKind::Special;
        pending.special = static_cast<char>(c);
        pending.raw = in_.substr(pos_, 1);
        ++pos_;
      } else if (c == ')') {
        return make_error("unbalanced ')' in address list");
      } else if (c == ']') {
        return make_error("unbalanced ']' in address list");
      } else {
        return make_error("invalid character in address list");
      }
      tokens.push_back(std::move(pending));
      pending = Token{};
    }
    pending.kind = TokenKind::End;
    tokens.push_back(std::move(pending));
    return tokens;
  }

 private:
  // Folding is CRLF followed by WSP; anything else with CR or LF is an injection attempt.
  Result<bool> skip_fws() {
    bool any = false;
    while (pos_ < in_.size()) {
      char c = in_[pos_];
      if (c == ' ' || c == '\t') {
        ++pos_;
        any = true;
      } else if (c == '\r' || c == '\n') {
        if (c == '\r' && pos_ + 2 < in_.size() && in_[pos_ + 1] == '\n' &&
            (in_[pos_ + 2] == ' ' || in_[pos_ + 2] == '\t')) {
          pos_ += 2;
          continue;
        }
        return make_error("CR or LF in address list");
      } else if (c == '\0') {
        return make_error("NUL in address list");
      } else {
        break;
      }
    }
    return any;
  }

  Result<bool> skip_cfws(Token& pending) {
    while (true) {
      auto ws = skip_fws();
      if (!ws) return ws.error();
      if (*ws) pending.space_before = true;
      if (pos_ < in_.size() && in_[pos_] == '(') {
        auto c = comment();
        if (!c) return c.error();
        pending.comment_before = std::string(text::trim(*c));
        pending.space_before = true;
        continue;
      }
      return true;
    }
  }

  Result<std::string> comment() {
    int depth = 0;
    std::string out;
    while (pos_ < in_.size()) {
      char c = in_[pos_];
      if (c == '(') {
        if (depth++ > 0) out.push_back(c);
        ++pos_;
      } else if (c == ')') {
        ++pos_;
        if (--depth == 0) return out;
        out.push_back(c);
      } else if (c == '\\' && pos_ + 1 < in_.size() && in_[pos_ + 1] != '\r' &&
                 in_[pos_ + 1] != '\n' && in_[pos_ + 1] != '\0') {
        out.push_back(in_[pos_ + 1]);
        pos_ += 2;
      } else if (c == '\r' || c == '\n' || c == ' ' || c == '\t' || c == '\0') {
        auto ws = skip_fws();
        if (!ws) return ws.error();
        out.push_back(' ');
      } else {
        out.push_back(c);
        ++pos_;
      }
    }
    return make_error("unterminated comment in address list");
  }

  Result<bool> quoted(Token& t) {
    size_t start = pos_++;
    t.kind = TokenKind::Quoted;
    while (pos_ < in_.size()) {
      char c = in_[pos_];
      if (c == '"') {
        ++pos_;
        t.raw = in_.substr(start, pos_ - start);
        return true;
      }
      if (c == '\\') {
        if (pos_ + 1 >= in_.size()) break;
        char q = in_[pos_ + 1];
        if (q == '\r' || q == '\n' || q == '\0')
          return make_error("CR, LF or NUL in quoted string");
        t.unescaped.push_back(q);
        pos_ += 2;
      } else if (c == '\r' || c == '\n') {
        size_t before = pos_;
        auto ws = skip_fws();
        if (!ws) return ws.error();
        t.unescaped.append(in_.substr(before + 2, pos_ - before - 2));  // the WSP after CRLF
      } else if (c == '\0') {
        return make_error("NUL in quoted string");
      } else {
        t.unescaped.push_back(c);
        ++pos_;
      }
    }
    return make_error("unterminated quoted string in address list");
  }

  std::string_view in_;
  size_t pos_ = 0;
};

bool is_word(const Token& t) {
  return t.kind == TokenKind::Atom || t.kind == TokenKind::Quoted;
}
bool is_special(const Token& t, char c) {
  return t.kind == TokenKind::Special && t.special == c;
}

class Parser {
 public:
  explicit Parser(std::vector<Token> tokens) : t_(std::move(tokens)) {}

  Result<std::vector<Mailbox>> list() {
    std::vector<Mailbox> out;
    bool any = false;
    while (peek().kind != TokenKind::End) {
      if (is_special(peek(), ',')) {  // obs-addr-list: empty elements
        ++pos_;
        continue;
      }
      if (auto r = address(out, false); !r) return r.error();
      any = true;
      if (is_special(peek(), ',')) {
        ++pos_;
      } else if (peek().kind != TokenKind::End) {
        return make_error("unexpected '" + std::string(peek().raw) + "' in address list");
      }
    }
    if (!any) return make_error("empty address list");
    return out;
  }

 private:
  const Token& peek() const { return t_[pos_]; }

  Result<void> address(std::vector<Mailbox>& out, bool in_group) {
    size_t phrase_start = pos_;
    while (is_word(peek()) || is_special(peek(), '.')) ++pos_;
    size_t phrase_end = pos_;
    const Token& stop = peek();
    if (is_special(stop, '<')) {
      std::string name = phrase(phrase_start, phrase_end);
      ++pos_;
      if (is_special(peek(), '@')) {  // obs-route "@a,@b:" is dropped
        while (peek().kind != TokenKind::End && !is_special(peek(), ':')) ++pos_;
        if (peek().kind == TokenKind::End) return make_error("unterminated route in angle address");
        ++pos_;
      }
      size_t local_start = pos_;
      while (is_word(peek()) || is_special(peek(), '.')) ++pos_;
      size_t local_end = pos_;
      if (!is_special(peek(), '@')) {
        return make_error(is_special(peek(), '>') && local_start == local_end
                              ? "empty angle address"
                              : "missing @");
      }
      ++pos_;
      auto addr = addr_spec(local_start, local_end);
      if (!addr) return addr.error();
      if (!is_special(peek(), '>')) return make_error("missing '>' after address");
      ++pos_;
      out.push_back(Mailbox{std::move(*addr), std::move(name)});
      return {};
    }
    if (is_special(stop, ':')) {
      if (in_group) return make_error("nested group in address list");
      ++pos_;
      while (true) {
        if (is_special(peek(), ';')) {
          ++pos_;
          return {};
        }
        if (peek().kind == TokenKind::End) return {};  // missing ';' at the very end: tolerated
        if (is_special(peek(), ',')) {
          ++pos_;
          continue;
        }
        if (auto r = address(out, true); !r) return r;
        if (!is_special(peek(), ',') && !is_special(peek(), ';') && peek().kind != TokenKind::End) {
          return make_error("unexpected '" + std::string(peek().raw) + "' in group");
        }
      }
    }
    if (is_special(stop, '@')) {
      ++pos_;
      auto addr = addr_spec(phrase_start, phrase_end);
      if (!addr) return addr.error();
      // An old-style "addr (Name)": the comment sits in front of the next token.
      out.push_back(Mailbox{std::move(*addr), peek().comment_before});
      return {};
    }
    if (phrase_start == phrase_end) {
      return make_error(stop.kind == TokenKind::End
                            ? "expected an address"
                            : "unexpected '" + std::string(stop.raw) + "' in address list");
    }
    return make_error("missing @");
  }

  // Tokens [local_start, local_end) are the local part; pos_ is just after '@'.
  Result<std::string> addr_spec(size_t local_start, size_t local_end) {
    std::string addr;
    bool want_word = true;
    for (size_t i = local_start; i < local_end; ++i) {
      bool word = is_word(t_[i]);
      if (word != want_word) return make_error("invalid local part");
      addr += t_[i].raw;
      want_word = !want_word;
    }
    if (want_word)
      return make_error(local_start == local_end ? "empty local part" : "invalid local part");
    addr.push_back('@');
    if (peek().kind == TokenKind::DomainLiteral) {
      addr += peek().raw;
      ++pos_;
    } else {
      want_word = true;
      while (peek().kind == TokenKind::Atom || is_special(peek(), '.')) {
        if ((peek().kind == TokenKind::Atom) != want_word) break;
        addr += peek().raw;
        want_word = !want_word;
        ++pos_;
      }
      if (want_word) return make_error("invalid domain");
    }
    auto valid = validate_address(addr);
    if (!valid) return valid.error();
    return std::move(*valid);
  }

  std::string phrase(size_t start, size_t end) const {
    std::string name;
    for (size_t i = start; i < end; ++i) {
      if (i > start && t_[i].space_before) name.push_back(' ');
      name += t_[i].value();
    }
    return name;
  }

  std::vector<Token> t_;
  size_t pos_ = 0;
};

}  // namespace

Result<std::vector<Mailbox>> parse_address_list(std::string_view header_value) {
  // The tokens refer to header_value, which outlives them.
  auto tokens = Lexer(header_value).run();
  if (!tokens) return tokens.error();
  return Parser(std::move(*tokens)).list();
}

}  // namespace mailcar
