"""lmms-eval's multi-round requests as a chat on one video's global memory (``moviechat answer`` with several
``--question``): each round is asked after the earlier rounds and the model's own answers, the task's
``doc_to_text`` giving the next round from those answers until it signals the end."""

from __future__ import annotations

from moviechat.lmms_eval_plugin.requests import ask_of, video_keys

MAX_ROUNDS = 32  # a task whose doc_to_text never signals the end stops here


def chat_rounds(model, request) -> list[str]:
    """The answers of every round of one ``generate_until_multi_round`` request, in round order."""
    context, _gen_kwargs, doc_to_visual, doc_to_text, doc_id, task, split = request.args[:7]
    doc = model.task_dict[task][split][doc_id]
    ask = ask_of(context, doc_to_visual(doc), f"{task} doc {doc_id}")
    answerer = model.answerer
    key = video_keys([ask])[ask.path]
    model.lookup.paths = {key: ask.path}
    feats, meta = model.lookup(key)
    tokens, stamps = answerer.frame_tokens(feats, meta, key)
    read = answerer.memory_reads(tokens, stamps, meta, [(context, None)], key)[0]
    history: list[tuple[str, str]] = []
    question, info = context, None
    for round_idx in range(1, MAX_ROUNDS + 1):
        reply = answerer.generate_one(read, answerer.format.prompt_ids(question, history))["prediction"]
        history.append((question, reply))
        step = doc_to_text(doc, previous_output=[a for _, a in history], round_idx=round_idx,
                           previous_round_info=info)
        if not (isinstance(step, tuple) and len(step) == 5):
            break
        _visuals, question, terminal, updated, info = step
        if updated is not None:  # the task may rewrite the answers so far
            history = [(q, a) for (q, _), a in zip(history, updated)]
        if terminal or not question:
            break
    return [a for _, a in history]
