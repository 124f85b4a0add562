"""The words shared by data, models and the jobs: the prompt format and ``<ImageHere>`` splicing
(``prompt``), a run's tokenizer (``tokenizers``) and answer matching (``answers``).

May use ``common`` and ``config``."""
