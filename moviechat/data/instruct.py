"""Video-LLaMA's training annotations (the datasets MovieChat's package carries) -> records in file order.

- ``webvid``: CSV files (a folder of them, or one) with ``videoid``, ``page_dir``, ``name`` (the caption);
  the video is ``<page_dir>/<videoid>.mp4``; the caption is cleaned as BLIP's ``blip_caption`` does.
- ``videochat_instruct`` (VideoChat-instruct-11K): one JSON list of ``{"video": REL_PATH, "QA": [{"q", "a"}]}``.
- ``llava_instruct`` (LLaVA-Instruct-150K): one JSON list of ``{"id", "image": FILE, "conversations": [...]}``.
- ``cc_sbu_align`` / ``cc_sbu`` / ``laion``: image-caption pairs, MiniGPT-4's ``filter_cap.json``
  (``{"annotations": [{"image_id", "caption"}]}``, the image ``<image_id>.jpg``), a JSON list of ``{"image",
  "caption"}``, or the webdataset shards the original streams (``<key>.jpg`` + ``<key>.json``); ``cc_sbu`` and
  ``laion`` clean captions as BLIP does, ``cc_sbu_align`` takes them as written (as the originals do).

A record's features are found by its key: the annotation's video or image path without its extension,
sub-folders kept (``cook/v0.mp4`` -> ``cook/v0``).
"""

from __future__ import annotations

import csv
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Optional

from webdataset import tariterators

from moviechat.data.annotations import QA
from moviechat.data.conversation import Dialog, blip_caption, caption_dialog, llava_dialog, videochat_dialog
from moviechat.common.errors import DataError
from moviechat.data.checks import check_key
from moviechat.data.stores import SkipCounter, expand_shards


@dataclass(frozen=True)
class Record:
    key: str  # the features' key
    dialog: Dialog
    where: str  # file and record index, for messages

    def qa(self) -> QA:
        """The record as a dataset's question: its last question and answer (what held-out generation asks and
        scores), the dialog itself for training."""
        return QA(self.dialog.question, self.dialog.answer, "global", dialog=self.dialog)


def media_key(path: Any, where: str) -> str:
    """A video or image path as a feature key: without its extension, sub-folders kept."""
    if not isinstance(path, str) or not path.strip():
        raise DataError(f"{where}: the video/image path must be a non-empty text, got {path!r}")
    p = PurePosixPath(path.strip().replace("\\", "/"))
    return check_key(str(p.with_suffix("")) if p.suffix else str(p), where)  # pathlib drops "./" parts


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise DataError(f"cannot read annotations {path}: {e}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: not valid JSON: {e}") from None


def _collect(items: list, path: Path, make: Callable[[Any, str], Record], skips: Optional[SkipCounter]) -> list[Record]:
    """Each item made into a record; a bad one raises (naming file and index) or, with ``skips``, is counted."""
    out = []
    for i, item in enumerate(items):
        where = f"{path}: record {i}"
        try:
            out.append(make(item, where))
        except DataError as e:
            if skips is None:
                raise
            skips.add("bad annotation record", str(e))
    if not out:
        raise DataError(f"{path}: no usable record")
    return out


def _json_list(path: Path, field: Optional[str] = None) -> list:
    data = _read_json(path)
    if field is not None and isinstance(data, dict):
        data = data.get(field)
    if not isinstance(data, list):
        raise DataError(f"{path}: must be a JSON list of records{f' (or an object with a list {field!r})' if field else ''}")
    return data


def read_videochat(path: Path, skips: Optional[SkipCounter] = None) -> list[Record]:
    def make(item, where):
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with 'video' and 'QA'")
        return Record(media_key(item.get("video"), where), videochat_dialog(item, where), where)

    return _collect(_json_list(path), path, make, skips)


def read_llava(path: Path, skips: Optional[SkipCounter] = None) -> list[Record]:
    def make(item, where):
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with 'image' and 'conversations'")
        return Record(media_key(item.get("image"), where), llava_dialog(item, where), where)

    return _collect(_json_list(path), path, make, skips)


def read_caption_pairs(path: Path, skips: Optional[SkipCounter] = None, clean: bool = False) -> list[Record]:
    def make(item, where):
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with 'image' (or 'image_id') and 'caption'")
        if "image" in item:
            key = media_key(item["image"], where)
        elif isinstance(item.get("image_id"), (str, int)) and not isinstance(item.get("image_id"), bool):
            key = media_key(f"{item['image_id']}.jpg", where)
        else:
            raise DataError(f"{where}: needs 'image' (a path) or 'image_id'")
        caption = item.get("caption")
        return Record(key, caption_dialog(blip_caption(caption) if clean and isinstance(caption, str) else caption,
                                          where), where)

    return _collect(_json_list(path, "annotations"), path, make, skips)


def is_shard_pattern(path: str) -> bool:
    """Whether annotations name tar shards (one ``.tar``, a glob or a brace pattern) rather than a JSON file."""
    return path.endswith(".tar") or any(c in path for c in "*?[{")


def read_caption_shards(pattern: str, skips: Optional[SkipCounter] = None, clean: bool = True) -> list[Record]:
    """The original's webdataset form of cc_sbu / laion: tar shards of ``<key>.jpg`` + ``<key>.json``
    (``{"caption": ...}``), keys as webdataset splits member names; only the ``.json`` members are read here
    (the features: ``extract_features.py --image-shards`` over the same shards keys them alike)."""
    shards = expand_shards(pattern)
    if not shards:
        raise DataError(f"data.annotations={pattern!r} matches no shard")
    records = []
    for shard in shards:
        try:
            with tarfile.open(shard) as tar:
                items = [(m.name, tar.extractfile(m).read()) for m in tar if m.isfile() and m.name.endswith(".json")]
        except (tarfile.TarError, OSError) as e:
            raise DataError(f"cannot read caption shard {shard}: {e}") from None

        def make(item, where):
            name, raw = item
            try:
                caption = json.loads(raw).get("caption")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
                raise DataError(f"{where} ({name}): not a JSON object with 'caption': {e}") from None
            key = check_key(tariterators.base_plus_ext(name)[0], where)
            return Record(key, caption_dialog(blip_caption(caption) if clean and isinstance(caption, str) else caption,
                                              f"{where} ({name})"), f"{where} ({name})")

        records += _collect(items, Path(shard), make, skips)
    return records


def read_pairs(path: Path, skips: Optional[SkipCounter] = None, clean: bool = False) -> list[Record]:
    """Image-caption pairs: JSON (``filter_cap.json`` or a list) or, for a shard pattern, the webdataset form."""
    if is_shard_pattern(str(path)):
        return read_caption_shards(str(path), skips, clean)
    return read_caption_pairs(path, skips, clean)


def read_webvid(path: Path, skips: Optional[SkipCounter] = None) -> list[Record]:
    """A CSV file, or every ``*.csv`` of a folder (sorted), in file order."""
    files = sorted(path.glob("*.csv")) if path.is_dir() else [path]
    if not files:
        raise DataError(f"{path}: no .csv annotation file")
    records = []
    for file in files:
        try:
            with open(file, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            raise DataError(f"cannot read annotations {file}: {e}") from None

        def make(row, where):
            missing = [k for k in ("videoid", "page_dir", "name") if not row.get(k)]
            if missing:
                raise DataError(f"{where}: missing {', '.join(missing)} (webvid CSV needs videoid, page_dir, name)")
            key = media_key(f"{row['page_dir']}/{row['videoid']}.mp4", where)
            return Record(key, caption_dialog(blip_caption(row["name"].strip()), where), where)

        records += _collect(rows, file, make, skips)
    return records


READERS: dict[str, Callable[..., list[Record]]] = {
    "webvid": read_webvid,
    "videochat_instruct": read_videochat,
    "llava_instruct": read_llava,
    "cc_sbu_align": read_pairs,  # captions as written (the original's CCSBUAlignDataset)
    "cc_sbu": lambda path, skips=None: read_pairs(path, skips, clean=True),  # cleaned by blip_caption
    "laion": lambda path, skips=None: read_pairs(path, skips, clean=True),
}
