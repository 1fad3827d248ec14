#include "submission/dkim_signing.hpp"

#include <string>

#include "mailcar/crypto.hpp"
#include "mailcar/dkim.hpp"
#include "mailcar/log.hpp"
#include "mailcar/text.hpp"

namespace mailcar {

const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim,
                                  std::string_view from_domain) {
  std::string domain = text::lower_ascii(from_domain);
  const DkimConfig* parent = nullptr;
  for (const DkimConfig& d : dkim) {
    if (!d.key) continue;
    if (domain == d.domain) return &d;
    if (d.subdomains && domain.size() > d.domain.size() + 1 && domain.ends_with(d.domain) &&
        domain[domain.size() - d.domain.size() - 1] == '.') {
      // The closest parent wins (a.b.example.com: b.example.com before example.com).
      if (parent == nullptr || d.domain.size() > parent->domain.size()) parent = &d;
    }
  }
  return parent;
}

void dkim_sign(const std::vector<DkimConfig>& dkim, Submission& submission, uint64_t now_ms) {
  if (dkim.empty() || submission.header_from.empty()) return;
  const std::string& from = submission.header_from.front();
  size_t at = from.rfind('@');
  if (at == std::string::npos) return;
  const DkimConfig* d = dkim_domain_for(dkim, std::string_view(from).substr(at + 1));
  if (d == nullptr) return;
  dkim::SignParams params{d->domain, d->selector, static_cast<int64_t>(now_ms / 1000)};
  Result<std::string> field = dkim::sign(submission.message.data, params, *d->key);
  if (!field) {
    log::error(
        "dkim_failed",
        {{"id", submission.message.id}, {"domain", d->domain}, {"error", field.error().message}});
    return;
  }
  OutboundMessage& message = submission.message;
  message.data.insert(0, field.value());
  // The signature is part of the data in flight now.
  if (message.memory.attached()) message.memory.resize(message.data.size());
}

}  // namespace mailcar
