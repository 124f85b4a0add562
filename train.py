"""Train MovieChat (the same as ``moviechat train``): python train.py --cfg configs/experiments/X.yaml [key=value ...]

A thin script over the package: ``moviechat train --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
