#include "mailcar/memory_budget.hpp"

#include <utility>

namespace mailcar {

bool MemoryBudget::try_take(uint64_t bytes, uint64_t limit) {
  uint64_t used = used_.load(std::memory_order_relaxed);
  do {
    if (bytes > limit || used > limit - bytes) return false;
  } while (!used_.compare_exchange_weak(used, used + bytes, std::memory_order_relaxed));
  return true;
}

MemoryBudget& inflight_budget() {
  static auto* budget = new MemoryBudget();  // never destroyed: leases may outlive statics
  return *budget;
}

MemoryBudget& unauthenticated_budget() {
  static auto* budget = new MemoryBudget();
  return *budget;
}

MemoryLease::MemoryLease(MemoryLease&& other) noexcept
    : budget_(std::exchange(other.budget_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}

MemoryLease& MemoryLease::operator=(MemoryLease&& other) noexcept {
  if (this != &other) {
    release();
    budget_ = std::exchange(other.budget_, nullptr);
    bytes_ = std::exchange(other.bytes_, 0);
  }
  return *this;
}

bool MemoryLease::grow_to(uint64_t total, uint64_t limit) {
  if (total <= bytes_) return true;
  if (budget_ == nullptr) return false;
  if (!budget_->try_take(total - bytes_, limit)) return false;
  bytes_ = total;
  return true;
}

void MemoryLease::resize(uint64_t total) {
  if (budget_ == nullptr) return;
  if (total > bytes_) {
    budget_->take(total - bytes_);
  } else {
    budget_->give_back(bytes_ - total);
  }
  bytes_ = total;
}

}  // namespace mailcar
