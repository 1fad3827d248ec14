// The daemon: command line, configuration, listeners, signals. main() only calls this.
#pragma once

namespace mailcar {
int daemon_main(int argc, char** argv);
}
