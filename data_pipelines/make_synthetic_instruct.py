"""Write the generated instruction set (the same as ``moviechat make-synthetic-instruct``).

A thin script over the package: ``moviechat make-synthetic-instruct --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["make-synthetic-instruct", *sys.argv[1:]]))
