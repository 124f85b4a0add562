"""MovieChat-1K inside lmms-eval (the optional extra ``pip install -e ".[lmms-eval]"``): the model
``moviechat_ft`` (``model``: lmms-eval's interface; ``requests``: its requests as our questions; ``settings``: its
``--model_args``; ``chat_rounds``: multi-round requests), found by lmms-eval through the entry point
``lmms_eval.models`` -> :func:`manifest`, and the task files ``tasks/`` that ``moviechat lmms-eval-tasks`` writes
beside a local copy of the test release (``task_files``).

May use: common, config, text, memory, data, models, runs, answering. Only ``model`` imports lmms-eval.
"""


def manifest():
    """What lmms-eval registers: ``moviechat_ft`` (alias ``moviechat_trained``), a simple model."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id="moviechat_ft", simple_class_path="moviechat.lmms_eval_plugin.model.MovieChatFT",
                         aliases=("moviechat_trained",))
