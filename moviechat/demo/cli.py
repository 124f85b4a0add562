"""``moviechat demo``: a trained model in the browser (Gradio, ``pip install -e ".[demo]"``).

    moviechat demo RUN [--videos DIR] [--host 127.0.0.1] [--port 7860] [--fps 1] [--max-upload-mb 200]

RUN is what ``moviechat answer`` takes: a run folder or checkpoint, an ``hf`` export folder, or an original
MovieChat ``.pth`` with ``--config``. Upload a video (or a features ``.npy``), or choose one of ``--videos``; pick
global or breakpoint mode and a time; ask. The answer streams onto the page and is the one ``moviechat answer``
gives for the same run, video, time and settings; follow-up questions chat on the same memory, and the
memory at that moment is drawn. The page binds to 127.0.0.1 unless ``--host`` says otherwise, takes uploads
up to ``--max-upload-mb``, encodes one video at a time and sends nothing to any other host.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Optional

from moviechat.common.errors import UserError, stop_if_only_checking


def main(argv: Optional[list[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder or checkpoint, an hf export folder, or an original .pth (with --config)")
    p.add_argument("--config", help="with an original .pth: the experiment config it was trained with")
    p.add_argument("--videos", help="a folder of videos (and features .npy) the page offers")
    p.add_argument("--host", default="127.0.0.1", help="(default: %(default)s; 0.0.0.0 serves other machines too)")
    p.add_argument("--port", type=int, default=7860, help="(default: %(default)s)")
    p.add_argument("--fps", type=float, default=1.0, help="frames decoded per second of video (default: %(default)s)")
    p.add_argument("--max-upload-mb", type=int, default=200, help="(default: %(default)s)")
    p.add_argument("--trust-checkpoint", action="store_true")
    args = p.parse_args(argv)
    if not 0 < args.port < 65536 or args.max_upload_mb < 1 or not args.fps > 0:
        raise UserError(f"--port={args.port} must be in 1..65535, --max-upload-mb={args.max_upload_mb} >= 1 and "
                        f"--fps={args.fps} > 0")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # nothing sent to Gradio's servers
    try:
        import gradio  # noqa: F401
    except ImportError:
        raise UserError('moviechat demo needs Gradio: pip install -e ".[demo]" (or make demo RUN=...)') from None
    stop_if_only_checking()
    if args.videos and not Path(args.videos).is_dir():
        raise UserError(f"--videos {args.videos}: no such folder")
    from moviechat.demo.page import build_page
    from moviechat.demo.session import DemoSession

    session = DemoSession(load_answerer(args.run, args.config, args.trust_checkpoint),
                          Path(args.videos) if args.videos else None, args.fps, args.max_upload_mb)
    page = build_page(session)
    print(f"demo of {session.provenance()['run']} on http://{args.host}:{args.port}", flush=True)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop as Ctrl-C does: the server closes, exit runs
    page.queue(default_concurrency_limit=1, max_size=32).launch(
        server_name=args.host, server_port=args.port, max_file_size=f"{args.max_upload_mb}mb", share=False,
        show_error=False, inbrowser=False, quiet=True)
    return 0


def load_answerer(run: str, config: Optional[str], trust: bool):
    """The model ``moviechat answer`` would load for ``run`` (with ``config``: an original ``.pth``)."""
    from moviechat.answering.answerer import Answerer

    if config is None:
        return Answerer.load(run, trust=trust)
    from moviechat.runs.loading import load_with_config
    from moviechat.runs.provenance import source_of

    cfg, tokenizer, model = load_with_config(run, config)
    answerer = Answerer(cfg, tokenizer, model)
    answerer.source = source_of(cfg, Path(run))
    return answerer


if __name__ == "__main__":
    sys.exit(main())
