"""``moviechat demo``: a trained model in the browser. ``session`` (what the page does, without the page), ``page``
(the Gradio page), ``picture`` (the memory drawn), ``cli`` (the command)."""
