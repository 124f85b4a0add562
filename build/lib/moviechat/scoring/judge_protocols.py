"""The judge protocols behind published MovieChat-1K and short-video QA numbers, each as its source runs it.

A protocol is the request (system and user text, ``temperature``, ``max_tokens``; the judge model's name is
passed through), how a reply becomes a verdict (parsing and failure handling) and how verdicts aggregate
(the mean of each value over the questions that have one). Written from reading each source:

- ``lmms-eval``: lmms-eval 0.7.3 ``lmms_eval/tasks/moviechat/utils.py`` (``get_eval_generic``,
  ``parse_score``, ``parse_acc``, ``moviechat_aggregate_score`` / ``_acc``). ``temperature: 0``,
  ``max_tokens: 64``; the whole reply is ``ast.literal_eval``-ed; score ``int(d.get("score", 0))`` (4.8 -> 4, a
  string "4" -> 4, anything unparsable -> 0); accuracy counts only the exact string ``yes`` of
  ``str(d.get("pred", "no"))``; an empty or failed reply is a review of ``""``: score 0, ``no``, and it stays
  in the mean (every question counts).
- ``moviechat``: MovieChat's ``eval_code/Acc_score/run_eval_qa_moviechat.py``. Same texts, no
  ``temperature`` or ``max_tokens`` sent; the script cuts the text between ``'pred': '`` and the next ``',``
  and between ``'score': `` and the next ``}`` and prints both without aggregating. Here: accuracy is the
  share of cut ``pred`` strings equal to ``yes``, score the mean of the cut scores read as numbers (4.8
  stays 4.8), each over the replies where it was found; a failed request (the script would stop) is
  counted as failed and left out.
- ``videochatgpt``: MovieChat's ``eval_code/Acc_score/run_eval_qa.py`` (Video-ChatGPT's
  ``evaluate_activitynet_qa.py``), the short-video QA protocol (MSVD-QA, MSRVTT-QA, ActivityNet-QA). Same
  texts and no sampling settings; the whole reply is ``ast.literal_eval``-ed (a reply that does not parse
  is requested again there until it does: here it is counted as malformed and left out); score
  ``int(d["score"])`` averaged; accuracy ``yes / (yes + no)`` where a ``pred`` containing ``yes`` is a yes,
  else one containing ``no`` a no (substring tests on the lower-cased string, as the source does).
- ``ours``: the forgiving parser (a ``{...}`` anywhere in the reply, ``Yes``/``yes``, a 0-5 number kept as
  it is); malformed and failed replies are counted and left out.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from typing import Any, Callable, Optional

# The system and user text every source above sends (Video-ChatGPT's, kept byte for byte, including the
# missing spaces where its string pieces meet).
SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for question-answer pairs. "
    "Your task is to compare the predicted answer with the correct answer and determine if they match meaningfully. Here's how you can accomplish the task:"
    "------"
    "##INSTRUCTIONS: "
    "- Focus on the meaningful match between the predicted answer and the correct answer.\n"
    "- Consider synonyms or paraphrases as valid matches.\n"
    "- Evaluate the correctness of the prediction compared to the answer."
)
USER = (
    "Please evaluate the following video-based question-answer pair:\n\n"
    "Question: {question}\n"
    "Correct Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\n"
    "Provide your evaluation only as a yes/no and score where the score is an integer value between 0 and 5, with 5 indicating the highest meaningful match. "
    "Please generate the response in the form of a Python dictionary string with keys 'pred' and 'score', where value of 'pred' is  a string of 'yes' or 'no' and value of 'score' is in INTEGER, not STRING."
    "DO NOT PROVIDE ANY OTHER OUTPUT TEXT OR EXPLANATION. Only provide the Python dictionary string. "
    "For example, your response should look like this: {{'pred': 'yes', 'score': 4.8}}."
)


@dataclass(frozen=True)
class Verdict:
    """One judged question: ``acc`` 1/0 and ``score``, each None when the protocol leaves it out of its mean."""

    acc: Optional[float]
    score: Optional[float]
    status: str  # ok | malformed | failed


@dataclass(frozen=True)
class JudgeProtocol:
    name: str
    source: str  # the file it follows
    temperature: Optional[float]
    max_tokens: Optional[int]
    verdict: Callable[[Optional[str]], Verdict]  # None: the request failed
    empty_is_failure: bool = False  # lmms-eval retries an empty reply, then scores it as a failure

    def payload(self, model: str, question: str, answer: str, prediction: str) -> dict[str, Any]:
        """The request body, keys in the source's order."""
        body: dict[str, Any] = {"model": model, "messages": [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": USER.format(question=question, answer=answer, prediction=prediction)}]}
        if self.temperature is not None:
            body["temperature"] = self.temperature
        if self.max_tokens is not None:
            body["max_tokens"] = self.max_tokens
        return body


def _literal(reply: str):
    try:
        return ast.literal_eval(reply)
    except Exception:  # noqa: BLE001  (the sources catch everything here too)
        return None


def lmms_eval_verdict(reply: Optional[str]) -> Verdict:
    review = "" if reply is None else reply.strip()
    parsed = _literal(review)
    try:
        score = int(parsed.get("score", 0))
    except Exception:  # noqa: BLE001  (parse_score: any failure scores 0)
        score = 0
    try:
        pred = str(parsed.get("pred", "no"))
    except Exception:  # noqa: BLE001  (parse_acc: any failure is "no")
        pred = "no"
    status = "failed" if not review else ("ok" if isinstance(parsed, dict) else "malformed")
    return Verdict(float(pred == "yes"), float(score), status)


def _cut(reply: str, start_mark: str, end_mark: str) -> Optional[str]:
    start = reply.find(start_mark)
    end = reply.find(end_mark, start)
    return reply[start + len(start_mark):end] if start != -1 and end != -1 else None


def moviechat_verdict(reply: Optional[str]) -> Verdict:
    if reply is None:
        return Verdict(None, None, "failed")
    pred, score_text = _cut(reply, "'pred': '", "',"), _cut(reply, "'score': ", "}")
    try:
        score = float(score_text) if score_text is not None else None
    except ValueError:
        score = None
    acc = None if pred is None else float(pred == "yes")
    return Verdict(acc, score, "ok" if acc is not None and score is not None else "malformed")


def videochatgpt_verdict(reply: Optional[str]) -> Verdict:
    if reply is None:
        return Verdict(None, None, "failed")
    parsed = _literal(reply)
    try:
        pred, score = str(parsed["pred"]).lower(), float(int(parsed["score"]))
    except Exception:  # noqa: BLE001  (the source re-asks until it parses; we count it)
        return Verdict(None, None, "malformed")
    acc = 1.0 if "yes" in pred else 0.0 if "no" in pred else None
    return Verdict(acc, score, "ok")


def ours_verdict(reply: Optional[str]) -> Verdict:
    if reply is None:
        return Verdict(None, None, "failed")
    match = re.search(r"\{.*?\}", reply, flags=re.S)
    value = _literal(match.group(0)) if match else None
    if not isinstance(value, dict) or str(value.get("pred", "")).lower() not in ("yes", "no"):
        return Verdict(None, None, "malformed")
    try:
        score = float(value.get("score"))
    except (TypeError, ValueError):
        return Verdict(None, None, "malformed")
    if not 0 <= score <= 5:
        return Verdict(None, None, "malformed")
    return Verdict(float(str(value["pred"]).lower() == "yes"), score, "ok")


PROTOCOLS = {p.name: p for p in (
    JudgeProtocol("lmms-eval", "lmms-eval 0.7.3 lmms_eval/tasks/moviechat/utils.py", 0, 64, lmms_eval_verdict,
                  empty_is_failure=True),
    JudgeProtocol("moviechat", "MovieChat eval_code/Acc_score/run_eval_qa_moviechat.py", None, None, moviechat_verdict),
    JudgeProtocol("videochatgpt", "MovieChat eval_code/Acc_score/run_eval_qa.py (Video-ChatGPT)", None, None,
                  videochatgpt_verdict),
    JudgeProtocol("ours", "moviechat/scoring/judge_protocols.py (forgiving parser)", 0, 64, ours_verdict),
)}
