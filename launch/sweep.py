"""Sweep or search the memory settings (the same as ``moviechat sweep``).

A thin script over the package: ``moviechat sweep --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
