"""Launch training on GPUs, nodes or SLURM (the same as ``moviechat launch``).

A thin script over the package: ``moviechat launch --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["launch", *sys.argv[1:]]))
