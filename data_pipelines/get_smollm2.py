"""SmolLM2-135M-Instruct into .cache/llm/ (the same as ``moviechat get-smollm2``; make smollm2).

A thin script over the package: ``moviechat get-smollm2 --help`` shows the options."""

import sys

from moviechat.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["get-smollm2", *sys.argv[1:]]))
