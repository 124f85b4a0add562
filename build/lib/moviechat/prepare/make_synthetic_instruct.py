"""Write the generated instruction set (Video-LLaMA's formats over frame tokens; moviechat/data/synthetic_instruct.py).

    moviechat make-synthetic-instruct --cfg configs/experiments/tiny_instruct_mixture.yaml \
        --out data/synthetic_instruct [--videos 240 --images 240]

Frame tokens are sized for the config's image Q-Former (queries x hidden). Written once: an existing set
is left as it is.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from moviechat.common.errors import stop_if_only_checking
from moviechat.config import load_config
from moviechat.data.synthetic_instruct import write_instruct_set


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="the experiment whose model sizes the frame tokens")
    p.add_argument("--out", required=True, help="folder to write (skipped when it already holds a set)")
    p.add_argument("--videos", type=int, default=240, help="long videos (VideoChat records, WebVid captions)")
    p.add_argument("--images", type=int, default=240, help="images (LLaVA records) and image-caption pairs each")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*")
    args = p.parse_args(argv)
    cfg = load_config(args.cfg, args.overrides)
    if args.videos < 4 or args.images < 4:
        p.error("--videos and --images must be >= 4 (each dataset needs a training and a held-out part)")
    stop_if_only_checking()
    q = cfg.model.image_qformer
    out = write_instruct_set(Path(args.out), q.num_query_tokens, q.hidden_size, args.videos, args.images, seed=args.seed)
    print(f"instruction set ({args.videos} videos, {args.images} images, [T, {q.num_query_tokens}, {q.hidden_size}] "
          f"tokens): {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
