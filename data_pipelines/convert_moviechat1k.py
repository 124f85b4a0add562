"""The MovieChat-1K release as feature shards (the same as ``moviechat convert-release``).

A thin script over the package: ``moviechat convert-release --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["convert-release", *sys.argv[1:]]))
