"""Model parts and the MovieChat model; importing this registers the ``moviechat`` builder."""

from moviechat.models.builder import build_moviechat
from moviechat.models.moviechat import MovieChatModel

__all__ = ["MovieChatModel", "build_moviechat"]
