"""Preparing a run's inputs: EVA features or frame tokens from videos and images (``extract_features``), the
MovieChat-1K release converted to feature shards (``convert_release``), the generated sets (``make_synthetic``,
``make_synthetic_instruct``) and the small real LLM from its PyPI wheel (``smollm2``).

May use every lower room (``common`` ... ``models``)."""
