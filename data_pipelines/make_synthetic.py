"""Write the generated long-video QA set (the same as ``moviechat make-synthetic``).

A thin script over the package: ``moviechat make-synthetic --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["make-synthetic", *sys.argv[1:]]))
