#include "mailcar/relay.hpp"

namespace mailcar {

std::shared_ptr<Transport> make_transport(uv_loop_t* loop, const ServiceConfig& service,
                                          const std::string& hostname,
                                          uint64_t delivery_timeout_ms) {
  if (service.driver == ServiceDriver::File) return std::make_shared<FileTransport>(loop, service);
  return std::make_shared<SmtpRelay>(loop, service, hostname, delivery_timeout_ms);
}

}  // namespace mailcar
