"""What a store may trust about a video before reading it: a key that stays inside its root, metadata
whose fields are what readers rely on. Violations are :class:`DataError` naming the key or field."""

from __future__ import annotations

from moviechat.common.errors import DataError
from moviechat.common.values import finite_number


def check_key(key: str, store: str) -> str:
    """A video key as a store may use it: a relative path below the store's root (sub-folders with ``/``),
    never ``..``, an absolute path or a backslash, which would read outside it."""
    parts = key.split("/") if isinstance(key, str) else []
    if (not isinstance(key, str) or not key.strip() or key.startswith("/") or "\\" in key or "\0" in key
            or any(p in ("", ".", "..") for p in parts)):
        raise DataError(f"video key {key!r} is not a relative path inside {store} (no '..', absolute path, empty "
                        f"part or backslash): refused")
    return key


def check_meta(meta, num_frames: int, where: str) -> None:
    """Metadata a reader can rely on: an object whose ``timestamps`` are one finite, non-decreasing number of
    seconds per frame, and whose ``fps`` / ``duration``, when given, are finite numbers >= 0."""
    if not isinstance(meta, dict):
        raise DataError(f"{where}: metadata must be a JSON object, got {type(meta).__name__}")
    stamps = meta.get("timestamps")
    if not isinstance(stamps, list) or len(stamps) != num_frames:
        raise DataError(f"{where}: metadata needs one timestamp per frame ({num_frames}), "
                        f"got {len(stamps) if isinstance(stamps, list) else repr(stamps)}")
    for i, t in enumerate(stamps):
        if not finite_number(t):
            raise DataError(f"{where}: timestamps[{i}]={t!r} must be a finite number of seconds")
        if i and t < stamps[i - 1]:
            raise DataError(f"{where}: timestamps[{i}]={t} comes before timestamps[{i - 1}]={stamps[i - 1]} "
                            f"(timestamps must not decrease)")
    for field_name in ("fps", "duration"):
        value = meta.get(field_name)
        if value is not None and not finite_number(value, 0):
            raise DataError(f"{where}: metadata {field_name}={value!r} must be a finite number >= 0")
