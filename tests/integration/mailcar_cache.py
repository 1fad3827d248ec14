"""Where slow test prerequisites (a Debian base image, npm packages) are kept between runs,
so that CI pays for them once: $MAILCAR_TEST_CACHE, else $XDG_CACHE_HOME/mailcar-test, else
/var/cache/mailcar-test when it can be written, else ~/.cache/mailcar-test."""
import os
from pathlib import Path


def cache_dir(*parts):
    base = os.environ.get("MAILCAR_TEST_CACHE")
    if not base and os.environ.get("XDG_CACHE_HOME"):
        base = os.path.join(os.environ["XDG_CACHE_HOME"], "mailcar-test")
    if not base:
        system = Path("/var/cache/mailcar-test")
        try:
            system.mkdir(parents=True, exist_ok=True)
            base = str(system) if os.access(system, os.W_OK) else None
        except OSError:
            base = None
    if not base:
        base = os.path.join(Path.home(), ".cache", "mailcar-test")
    path = Path(base, *parts)
    path.mkdir(parents=True, exist_ok=True)
    return path
