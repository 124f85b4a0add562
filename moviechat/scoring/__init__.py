"""Scoring answers: MovieChat-1K prediction files (``moviechat1k``), the judge client (``judge``) and the
protocols of lmms-eval, MovieChat and Video-ChatGPT (``judge_protocols``), short-video QA (``short_qa``), the model
and settings a summary names (``prediction_sources``), tables of several scorings (``results_table``) and the
needle recall map (``recall_map``).

May use the lower rooms and ``answering`` (short-video QA answers before it scores)."""
