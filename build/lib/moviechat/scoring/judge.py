"""A judge model behind any OpenAI-compatible ``/chat/completions`` endpoint, as MovieChat-1K scoring uses it.

The judge reads question, reference and prediction and replies ``{'pred': 'yes'|'no', 'score': 0-5}``; what
is sent and how the reply is read is the protocol's (``moviechat.scoring.judge_protocols``). Replies are cached in a
JSONL file keyed by protocol, model and texts (a rerun costs nothing), requests retried.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Optional

from moviechat.data.stores import DataError
from moviechat.scoring.judge_protocols import PROTOCOLS, JudgeProtocol

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


def judge_from_args(args, cache: Path) -> Optional["JudgeClient"]:
    """The judge of a scoring command line (``--judge-url``, ``--judge-model``, ``--judge-key-env``,
    ``--judge-protocol``, ``--judge-allow-insecure``), its key checked against the URL; None without a URL."""
    if not args.judge_url:
        return None
    key = os.environ.get(args.judge_key_env)
    check_judge_url(args.judge_url, key is not None, args.judge_allow_insecure)
    return JudgeClient(args.judge_url, args.judge_model, cache, key, protocol=PROTOCOLS[args.judge_protocol])


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
                 timeout: float = 60.0, backoff: float = 1.0, protocol: JudgeProtocol = PROTOCOLS["lmms-eval"]):
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.protocol = model, api_key, protocol
        self.retries, self.timeout, self.backoff = retries, timeout, backoff
        self.cache_path = cache
        self.cache: dict[str, str] = {}
        self.reported: set[str] = set()  # the model names the server said it answered with
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
        return hashlib.sha256(json.dumps([self.protocol.name, self.model, question, answer, prediction]).encode()).hexdigest()

    def reply(self, question: str, answer: str, prediction: str) -> Optional[str]:
        """The judge's raw reply (cached), or None when every attempt failed."""
        key = self.key(question, answer, prediction)
        if key in self.cache:
            return self.cache[key]
        payload = self.protocol.payload(self.model, question, answer, prediction)
        headers = ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}) | {"Content-Type": "application/json"}
        for attempt in range(self.retries):
            self.requests += 1
            try:
                request = urllib.request.Request(self.url, json.dumps(payload).encode(), headers, method="POST")
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    data = json.loads(response.read())
                text = data["choices"][0]["message"]["content"]
                if self.protocol.empty_is_failure and not str(text).strip():
                    raise ValueError("empty reply")  # lmms-eval asks again
                self._remember(key, text, data.get("model"))
                return text
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, TypeError, ValueError):
                if attempt + 1 < self.retries:
                    time.sleep(self.backoff * 2**attempt)
        self.failures += 1
        return None

    def _remember(self, key: str, text: str, reported: Optional[str]) -> None:
        self.cache[key] = text
        if reported:
            self.reported.add(str(reported))
        self.cache_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_path, "a") as f:
            f.write(json.dumps({"key": key, "model": self.model, "protocol": self.protocol.name, "reply": text,
                                "reported_model": reported}) + "\n")
