// sendmail's command line (SPEC §12), parsed the way getopt(3) would with sendmail's option
// letters, so that what PHP, cron and mail(1) pass is understood.
#include <string>
#include <string_view>
#include <vector>

#include "mailcar/address.hpp"
#include "mailcar/sendmail.hpp"

namespace mailcar::sendmail {
namespace {

// Letters that take a value in sendmail 8 and Postfix; all but -b, -f, -F, -o, -q, -r ignored.
constexpr std::string_view kWithValue = "ABbCdFfhLNOopRrVX";
// Letters without a value; all but -i and -t ignored.
constexpr std::string_view kFlags = "cGIimnstUv";

bool has_line_break(std::string_view s) {
  return s.find_first_of(std::string_view("\r\n\0", 3)) != std::string_view::npos;
}

Result<std::string> parse_sender(std::string_view text) {
  if (text.size() >= 2 && text.front() == '<' && text.back() == '>') {
    text = text.substr(1, text.size() - 2);
  }
  if (text.empty()) return std::string();  // the null reverse-path, for bounces
  auto address = validate_address(text);
  if (!address) return make_error("-f " + std::string(text) + ": " + address.error().message);
  return std::move(address).value();
}

// One option letter with its value (empty for flags).
Result<void> apply_option(char letter, const std::string& value, Options& o) {
  switch (letter) {
    case 't':
      o.extract_recipients = true;
      break;
    case 'i':
      o.ignore_dots = true;
      break;
    case 'o':  // -oi is -i; -oem, -odi, ... are sendmail.cf options without meaning here
      if (value == "i") o.ignore_dots = true;
      break;
    case 'f':
    case 'r': {
      auto sender = parse_sender(value);
      if (!sender) return sender.error();
      o.sender = std::move(sender).value();
      break;
    }
    case 'F':
      if (has_line_break(value)) return make_error("-F: the name holds a line break");
      o.full_name = value;
      break;
    case 'b':
      if (value != "m") {
        return make_error("-b" + value +
                          " is not supported: mailcar's sendmail only delivers a message "
                          "read from standard input (-bm)");
      }
      break;
    default:
      break;
  }
  return {};
}

// Splits one "-xyz" argument into its letters; a letter taking a value ends it. `i` moves past
// a separate value.
Result<void> parse_option_group(const std::vector<std::string>& args, size_t& i, Options& o) {
  const std::string& arg = args[i];
  for (size_t j = 1; j < arg.size(); ++j) {
    char letter = arg[j];
    if (letter == 'q') {
      return make_error("-q is not supported: mailcar's sendmail keeps no local queue");
    }
    if (kWithValue.find(letter) != std::string_view::npos) {
      std::string value = arg.substr(j + 1);
      if (value.empty()) {
        if (i + 1 >= args.size()) return make_error(std::string("-") + letter + " needs a value");
        value = args[++i];
      }
      return apply_option(letter, value, o);
    }
    if (kFlags.find(letter) == std::string_view::npos) {
      return make_error(std::string("unknown option -") + letter);
    }
    if (auto r = apply_option(letter, {}, o); !r.ok()) return r;
  }
  return {};
}

Result<void> add_operand(const std::string& operand, Options& o) {
  auto list = parse_address_list(operand);
  if (!list) return make_error("recipient " + operand + ": " + list.error().message);
  for (Mailbox& m : *list) o.recipients.push_back(std::move(m.address));
  return {};
}

}  // namespace

Result<Options> parse_arguments(const std::vector<std::string>& args) {
  Options o;
  bool operands_only = false;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& arg = args[i];
    Result<void> r;
    if (!operands_only && arg == "--") {
      operands_only = true;
    } else if (!operands_only && arg.size() > 1 && arg[0] == '-') {
      r = parse_option_group(args, i, o);
    } else {
      r = add_operand(arg, o);
    }
    if (!r.ok()) return r.error();
  }
  return o;
}

}  // namespace mailcar::sendmail
