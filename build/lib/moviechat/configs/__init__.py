"""The shipped configs, as package data: ``models/``, ``datasets/``, ``deepspeed/``, ``experiments/`` and
``sweeps/`` (YAML and JSON only). Found by path or by name through :func:`moviechat.config.find_config`;
the checkout's top-level ``configs`` is a link to this folder."""
