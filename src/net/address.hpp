// Socket address helpers shared by the listener, connect and streams.
#pragma once

#include <sys/socket.h>

#include <string>

namespace mailcar::net {

// "1.2.3.4:25" or "[::1]:25".
std::string format_address(const sockaddr* address);
// 127.0.0.0/8, ::1 and ::ffff:127.0.0.0/104.
bool is_loopback_address(const sockaddr* address);

}  // namespace mailcar::net
