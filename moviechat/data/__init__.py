"""Feature stores, annotations, the synthetic set, datasets and the collator.

Importing this registers the ``synthetic`` and ``moviechat1k`` dataset builders.
"""

from moviechat.data.builders import build_datasets
from moviechat.data.collator import Collator
from moviechat.data.dataset import Sample

__all__ = ["build_datasets", "Collator", "Sample"]
