#include "submission/dkim_signing.hpp"

#include <string>
#include <utility>

#include "mailcar/crypto.hpp"
#include "mailcar/dkim.hpp"
#include "mailcar/log.hpp"
#include "mailcar/text.hpp"

namespace mailcar {
namespace {

struct SignJob {
  uv_work_t req{};
  std::shared_ptr<const Config> config;  // owns the key
  const DkimConfig* domain = nullptr;
  Submission submission;
  uint64_t now_ms = 0;
  std::function<void(Submission)> next;
  Result<std::string> field = std::string();
};

// Any thread: only the job's own data and the key (which serializes itself).
void sign_job(SignJob& job) {
  dkim::SignParams params{job.domain->domain, job.domain->selector,
                          static_cast<int64_t>(job.now_ms / 1000)};
  job.field = dkim::sign(job.submission.message.data, params, *job.domain->key);
}

// Loop thread.
void finish_job(std::unique_ptr<SignJob> job) {
  OutboundMessage& message = job->submission.message;
  if (job->field.ok()) {
    message.data.insert(0, job->field.value());
    // The signature is part of the data in flight now.
    if (message.memory.attached()) message.memory.resize(message.data.size());
  } else {
    log::error("dkim_failed", {{"id", message.id},
                               {"domain", job->domain->domain},
                               {"error", job->field.error().message}});
  }
  auto next = std::move(job->next);
  Submission submission = std::move(job->submission);
  job.reset();
  next(std::move(submission));
}

}  // namespace

const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim,
                                  std::string_view from_domain) {
  std::string domain = text::lower_ascii(from_domain);
  const DkimConfig* parent = nullptr;
  for (const DkimConfig& d : dkim) {
    if (!d.key) continue;
    if (domain == d.domain) return &d;
    if (d.subdomains && domain.size() > d.domain.size() + 1 && domain.ends_with(d.domain) &&
        domain[domain.size() - d.domain.size() - 1] == '.') {
      if (parent == nullptr || d.domain.size() > parent->domain.size()) parent = &d;
    }
  }
  return parent;
}

const DkimConfig* dkim_domain_for(const std::vector<DkimConfig>& dkim, const Submission& s) {
  if (dkim.empty() || s.header_from.empty()) return nullptr;
  const std::string& from = s.header_from.front();
  size_t at = from.rfind('@');
  if (at == std::string::npos) return nullptr;
  return dkim_domain_for(dkim, std::string_view(from).substr(at + 1));
}

void dkim_sign_then(uv_loop_t* loop, std::shared_ptr<const Config> config, const DkimConfig& domain,
                    Submission submission, uint64_t now_ms, std::function<void(Submission)> next) {
  auto job = std::make_unique<SignJob>();
  job->config = std::move(config);
  job->domain = &domain;
  job->submission = std::move(submission);
  job->now_ms = now_ms;
  job->next = std::move(next);
  if (loop == nullptr) {
    sign_job(*job);
    return finish_job(std::move(job));
  }
  job->req.data = job.get();
  int rc = uv_queue_work(
      loop, &job->req, [](uv_work_t* req) { sign_job(*static_cast<SignJob*>(req->data)); },
      [](uv_work_t* req, int /*status*/) {
        // Not cancelled by mailcar: the job always ran.
        finish_job(std::unique_ptr<SignJob>(static_cast<SignJob*>(req->data)));
      });
  if (rc == 0) {
    job.release();
    return;
  }
  sign_job(*job);  // uv_queue_work fails only for a null callback: sign here instead
  finish_job(std::move(job));
}

}  // namespace mailcar
