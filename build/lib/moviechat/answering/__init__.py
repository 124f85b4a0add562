"""Answering questions about videos with a trained model and the streaming memory: the ``Answerer``
(``answerer``), breakpoint conventions (``breakpoints``), chats (``chat``), whole splits answered per video
with resumable outputs and a frame-token disk cache (``whole_split``), and the ``moviechat answer`` command
(``cli``).

May use every lower room (``common`` ... ``runs``)."""
