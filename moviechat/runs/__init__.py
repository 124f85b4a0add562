"""A run on disk: the folder and who owns it, ``status.json`` (``folder``), DeepSpeed checkpoints (``checkpoints``),
the plain train state a checkpoint records (``train_state``), loading a trained model (``loading``), exporting
it in four formats (``export``) and what a prediction records of where its model comes from (``provenance``).

May use ``common``, ``text``, ``config``, ``memory``, ``data`` and ``models``; never a job room."""
