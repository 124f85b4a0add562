"""Training: the loop (``loop``), building a run's parts (``setup``), its batches (``batches``), resume and save
(``resume``), logging (``logging``), stop requests (``stop``), the optimizer (``optim``), seeds and the DeepSpeed
config (``runtime``), elastic resume (``elastic``), held-out evaluation (``heldout``), curves (``curves``),
launchers (``launch``) and the ``moviechat train`` command (``cli``).

May use every lower room (``common`` ... ``runs``)."""
