"""Write the synthetic long-video QA set (shards + MovieChat-1K style annotations).

    moviechat make-synthetic --cfg configs/experiments/tiny_synthetic.yaml --out data/synthetic \
        [data.synthetic.num_videos=2000 ...]

Frame tokens are sized for the config's image Q-Former (queries x hidden). Train on it with
``data.name=moviechat1k data.shards='OUT/shards/syn-*.tar' data.annotations=OUT/annotations``; the
``synthetic`` dataset does this by itself (writing to ``data.synthetic.dir`` or the run's output folder).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moviechat.config import load_config
from moviechat.common.errors import stop_if_only_checking
from moviechat.data.synthetic import write_synthetic_set


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.cfg, args.overrides)
    stop_if_only_checking()
    q = cfg.model.image_qformer
    out = write_synthetic_set(cfg.data.synthetic, q.num_query_tokens, q.hidden_size, Path(args.out))
    print(f"synthetic set ({cfg.data.synthetic.num_videos} videos of [T, {q.num_query_tokens}, {q.hidden_size}] tokens): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
