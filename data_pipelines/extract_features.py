"""EVA features or frame tokens from videos and images (the same as ``moviechat extract-features``).

A thin script over the package: ``moviechat extract-features --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["extract-features", *sys.argv[1:]]))
