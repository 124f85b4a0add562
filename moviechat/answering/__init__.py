"""Answering questions about videos with a trained model and the streaming memory: the ``Answerer``
(``answerer``), breakpoint conventions (``breakpoints``), chats (``chat``), features by key or from video files
(``lookups``), question files and the run's split (``questions``), video files' frame tokens kept on disk
(``token_files``), whole splits answered per video with resumable outputs (``whole_split``), and the
``moviechat answer`` command (``cli``).

May use every lower room (``common`` ... ``runs``)."""
