"""Typed configuration: the schema with every default (``schema``, ``data`` for the data section), loading,
merging and validating it (errors name the dotted key, ``errors``), and finding shipped configs by name
(``shipped``).

May use ``common`` and ``memory.config``."""

from moviechat.config.errors import ConfigError
from moviechat.config.schema import (Config, DeepSpeedConfig, LLMConfig, LoraConfig, ModelConfig, QFormerConfig,
                                     RunConfig, TrainConfig, VisionConfig, as_dict, compose, load_config, save_config,
                                     to_yaml)
from moviechat.config.shipped import find_config, shipped_names

__all__ = ["ConfigError", "Config", "DeepSpeedConfig", "LLMConfig", "LoraConfig", "ModelConfig", "QFormerConfig",
           "RunConfig", "TrainConfig", "VisionConfig", "as_dict", "compose", "load_config", "save_config", "to_yaml",
           "find_config", "shipped_names"]
