"""Draw what each memory slot covers (the same as ``moviechat inspect-memory``).

A thin script over the package: ``moviechat inspect-memory --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["inspect-memory", *sys.argv[1:]]))
