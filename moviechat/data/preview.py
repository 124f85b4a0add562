"""One record as the model sees it: check a new data set before spending GPU hours on it.

    moviechat preview --cfg configs/experiments/X.yaml [key=value ...] --index N [--dataset NAME] [--text]

Prints one JSON line ``{"dataset", "key", "frames", "input_ids", "labels", "text"}``: the N-th record of the
annotation file (file order, before any split or shuffle; for MovieChat-1K style sets, the N-th question of
the sorted files), its frames as sampled for the memory, its input ids with one ``<ImageHere>`` id where the
video tokens go and its labels (-100 where masked). With ``--text`` the text shows the supervised spans in
``[[ ]]``, and is also printed as it reads on stderr (stdout stays one JSON line). A mixture needs ``--dataset``.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shlex
import sys
from pathlib import Path
from typing import Any, Optional

from moviechat.common.errors import DataError, run_cli, stop_if_only_checking
from moviechat.config import Config, load_config
from moviechat.data.annotations import QA
from moviechat.data.builders import DataPart, build_parts
from moviechat.data.collator import Collator
from moviechat.data.conversation import DialogEncoder, TextSettings, marked_text
from moviechat.data.instruct import READERS
from moviechat.data.stores import ShardStore, SkipCounter, VideoFeatures, read_npy_video, read_shard_video
from moviechat.data.synthetic import synthetic_dir
from moviechat.text.tokenizers import run_tokenizer


RECORD_INDEX = re.compile(r"record (\d+)")  # a record's place in its file, as readers name it


def record_at(part: DataPart, index: int) -> tuple[str, QA]:
    """The index-th record of a dataset in file order: (feature key, its QA)."""
    if part.builder in READERS:  # read again: records of one key are not in file order in the source
        skips = SkipCounter() if part.data.on_error == "skip" else None  # other records may be bad: N is still N
        records = READERS[part.builder](Path(part.data.annotations), skips)
        by_index = {int(m.group(1)): r for r in records if (m := RECORD_INDEX.search(r.where))}
        if skips is not None and skips.total and len(by_index) == len(records):  # one file: N is its place there
            if index not in by_index and 0 <= index <= max(by_index):
                raise DataError(f"--index {index}: {part.name} record {index} is bad and skipped "
                                f"(data.on_error=skip): its reason is printed above")
            if index in by_index:
                return by_index[index].key, by_index[index].qa()
        qas = [(r.key, r.qa()) for r in records]
    else:
        qas = [(key, qa) for key, items in part.source.qas.items() for qa in items]
    if not 0 <= index < len(qas):
        raise DataError(f"--index {index}: {part.name} has {len(qas)} record(s) (0 to {len(qas) - 1})")
    return qas[index]


def read_features(store, key: str) -> VideoFeatures:
    where = store.keys().get(key) if isinstance(store, ShardStore) else store.path_of(key)
    if where is None:
        raise DataError(f"record's key {key!r} has no features in the store")
    return read_shard_video(where, key) if isinstance(store, ShardStore) else read_npy_video(where, store.kind, store.fps)


def check_generated(cfg: Config, config_args: str = "--cfg CONFIG") -> None:
    """Preview reads and never writes: a generated set that is not there yet is refused, naming the command
    that writes it (``config_args``: the config and overrides this preview was given, so the command writes the
    very set the folder is named for)."""
    for part in cfg.data.parts():
        if part.builder != "synthetic":
            continue
        q, d = cfg.model.image_qformer.num_query_tokens, cfg.model.image_qformer.hidden_size
        folder = synthetic_dir(part.data.synthetic, q, d, cfg.run.output_dir)
        if not (folder / "DONE").is_file():
            raise DataError(f"{part.name}: the generated set {folder} is not written yet (preview only reads); "
                            f"write it with `moviechat make-synthetic {config_args} --out {folder}` or by training")


def preview(cfg: Config, index: int, dataset: Optional[str] = None, marked: bool = False,
            config_args: str = "--cfg CONFIG") -> dict[str, Any]:
    check_generated(cfg, config_args)
    parts = build_parts(cfg, split=False)
    names = [p.name for p in parts]
    if dataset is None and len(parts) > 1:
        raise DataError(f"the config mixes {', '.join(names)}: choose one with --dataset")
    part = parts[names.index(dataset)] if dataset in names else parts[0]
    if dataset is not None and dataset not in names:
        raise DataError(f"--dataset {dataset!r} is not in the config's datasets: {', '.join(names)}")
    tokenizer = run_tokenizer(cfg.model.llm, cfg.model.system_prompt, [t for p in parts for t in p.source.texts()])
    key, qa = record_at(part, index)
    video = read_features(part.source.store, key)
    part.train.set_encoder(DialogEncoder(tokenizer, TextSettings.of(part.data)))
    frames, stamps = part.train.sampled(video)
    sample = part.train.sample(video, frames, stamps, qa, random.Random(f"{cfg.run.seed}:{key}"))
    if sample is None:
        raise DataError(f"{part.name} record {index} cannot be learned: {part.train.skips.counts}")
    ids, labels = Collator(tokenizer, cfg.model.system_prompt, cfg.model.max_txt_len, part.data.feature_kind,
                           prompt=cfg.model.prompt).encode(sample)
    return {"dataset": part.name, "key": key, "frames": int(frames.shape[0]), "input_ids": list(ids),
            "labels": list(labels), "text": marked_text(ids, labels, tokenizer) if marked else tokenizer.decode(ids)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cfg", required=True, help="an experiment or dataset config")
    p.add_argument("--index", type=int, required=True, help="the record's index in its annotation file (from 0)")
    p.add_argument("--dataset", help="which dataset of a mixture (its name under data.mixture)")
    p.add_argument("--text", action="store_true", help="mark the supervised spans [[ ]] (also printed on stderr)")
    p.add_argument("overrides", nargs="*", help="dotted config overrides (data.annotations=...)")
    args = p.parse_args(argv)
    cfg = load_config(args.cfg, args.overrides)
    stop_if_only_checking()
    config_args = shlex.join(["--cfg", str(args.cfg), *args.overrides])
    out = preview(cfg, args.index, args.dataset, args.text, config_args)
    print(json.dumps(out, ensure_ascii=False))  # stdout: always exactly this one line
    if args.text:
        print(out["text"], file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
