"""A judge model behind any OpenAI-compatible ``/chat/completions`` endpoint, as MovieChat-1K scoring uses it.

The judge reads question, reference and prediction and replies ``{'pred': 'yes'|'no', 'score': 0-5}``.
Replies are cached in a JSONL file (a rerun costs nothing), requests retried, malformed replies counted.
"""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Optional

from moviechat.data.stores import DataError

JUDGE_SYSTEM = (
    "You are an intelligent chatbot designed for evaluating the correctness of generative outputs for "
    "question-answer pairs. Compare the predicted answer with the correct answer and determine if they match "
    "meaningfully. Consider synonyms or paraphrases as valid matches."
)
JUDGE_USER = (
    "Please evaluate the following video-based question-answer pair:\n\nQuestion: {question}\nCorrect Answer: {answer}\n"
    "Predicted Answer: {prediction}\n\nProvide your evaluation only as a yes/no and score where the score is an integer "
    "value between 0 and 5, with 5 indicating the highest meaningful match. Reply with a Python dictionary string with "
    "keys 'pred' ('yes' or 'no') and 'score' (an integer), for example {{'pred': 'yes', 'score': 4}}, and nothing else."
)


def parse_judgement(text: str) -> Optional[dict[str, Any]]:
    """``{'pred': 'yes'|'no', 'score': 0..5}`` from a judge's reply, or None when it is malformed."""
    match = re.search(r"\{.*?\}", text or "", flags=re.S)
    if not match:
        return None
    try:
        value = ast.literal_eval(match.group(0))
    except (ValueError, SyntaxError):
        return None
    if not isinstance(value, dict) or str(value.get("pred", "")).lower() not in ("yes", "no"):
        return None
    try:
        score = float(value.get("score"))
    except (TypeError, ValueError):
        return None
    if not 0 <= score <= 5:
        return None
    return {"pred": str(value["pred"]).lower(), "score": score}


def check_judge_url(url: str, sends_key: bool, allow_insecure: bool) -> None:
    """The API key goes only to ``https://`` URLs or to this machine (loopback); anything else needs
    ``allow_insecure``, and is said at start."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise DataError(f"--judge-url {url!r} must be an http(s) URL")
    if not sends_key or parsed.scheme == "https" or _loopback(parsed.hostname):
        return
    if not allow_insecure:
        raise DataError(f"--judge-url {url} is plain http to another machine: the API key would travel unencrypted; "
                        f"use https://, a loopback address, or pass --judge-allow-insecure")
    print(f"warning: sending the judge API key unencrypted to {url} (--judge-allow-insecure)", flush=True)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class JudgeClient:
    """A judge behind any OpenAI-compatible ``/chat/completions`` endpoint, with a JSONL cache."""

    def __init__(self, base_url: str, model: str, cache: Path, api_key: Optional[str] = None, retries: int = 3,
                 timeout: float = 60.0, backoff: float = 1.0):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key = model, api_key
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self.cache_path = cache
        self.cache: dict[str, str] = {}
        if cache.is_file():
            bad = 0
            for line in cache.read_text().splitlines():
                try:
                    row = json.loads(line) if line.strip() else None
                    if row is not None:
                        self.cache[row["key"]] = row["reply"]
                except (ValueError, KeyError, TypeError):  # a half-written line of a killed run: judged again
                    bad += 1
            if bad:
                print(f"warning: {cache}: {bad} unreadable line(s) ignored; those judgements are requested again")
        self.requests = 0
        self.failures = 0

    def key(self, question: str, answer: str, prediction: str) -> str:
        return hashlib.sha256(json.dumps([self.model, question, answer, prediction]).encode()).hexdigest()

    def reply(self, question: str, answer: str, prediction: str) -> Optional[str]:
        """The judge's raw reply (cached), or None when every attempt failed."""
        key = self.key(question, answer, prediction)
        if key in self.cache:
            return self.cache[key]
        payload = {"model": self.model, "temperature": 0, "max_tokens": 64, "messages": [
            {"role": "system", "content": JUDGE_SYSTEM},
            {"role": "user", "content": JUDGE_USER.format(question=question, answer=answer, prediction=prediction)}]}
        headers = {"Content-Type": "application/json"} | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {})
        for attempt in range(self.retries):
            self.requests += 1
            try:
                request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    text = json.loads(response.read())["choices"][0]["message"]["content"]
                self.cache[key] = text
                self.cache_path.parent.mkdir(parents=True, exist_ok=True)
                with open(self.cache_path, "a") as f:
                    f.write(json.dumps({"key": key, "model": self.model, "reply": text}) + "\n")
                return text
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, ValueError):
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        self.failures += 1
        return None
