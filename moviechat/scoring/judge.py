"""A judge model behind any OpenAI-compatible ``/chat/completions`` endpoint, as MovieChat-1K scoring uses it.

The judge reads question, reference and prediction and replies ``{'pred': 'yes'|'no', 'score': 0-5}``; what
is sent and how the reply is read is the protocol's (``moviechat.scoring.judge_protocols``).

The transport is ``httpx``: no redirect is followed (the request carries the API key; a redirect is a counted
failure naming its target), every request has a timeout, connection errors, 5xx and 429 are retried with
backoff (``Retry-After`` honoured), and every transport error is a counted failure, never a crash. Questions
are judged ``concurrency`` at a time. Only a text reply is cached, and only after the protocol has read it
(a verdict, or a reply the protocol counts as malformed, which the same judge would give again); a transport
failure, an error status or a reply whose content is not text is never cached, so a re-run asks exactly
those questions again. ``JudgeCache`` appends one JSONL line per reply under a file lock, so two scoring
processes can share a folder.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import threading
import time
import urllib.parse
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Optional, Sequence

import httpx
from tqdm import tqdm

from moviechat.common.atomic import held_lock
from moviechat.common.errors import UserError
from moviechat.common.jsonl import read_jsonl
from moviechat.scoring.judge_protocols import PROTOCOLS, JudgeProtocol


class JudgeSettingError(UserError, ValueError):
    """A judge setting that cannot work (its URL, concurrency or retries): named on one line."""


def check_judge_url(url: str, sends_key: bool, allow_insecure: bool) -> None:
    """The API key goes only to ``https://`` URLs or to this machine (loopback); anything else needs
    ``allow_insecure``, and is said at start."""
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise JudgeSettingError(f"--judge-url {url!r} must be an http(s) URL")
    if not sends_key or parsed.scheme == "https" or _loopback(parsed.hostname):
        return
    if not allow_insecure:
        raise JudgeSettingError(f"--judge-url {url} is plain http to another machine: the API key would travel unencrypted; "
                        f"use https://, a loopback address, or pass --judge-allow-insecure")
    print(f"warning: sending the judge API key unencrypted to {url} (--judge-allow-insecure)", flush=True)


DEFAULT_CONCURRENCY = 8
MAX_RETRY_AFTER = 300.0  # seconds: a longer Retry-After is waited this long at most
DEFAULT_TIMEOUT = 60.0  # seconds for one whole request, its reply's body included
MAX_REPLY_BYTES = 1 << 20  # a chat completion of a verdict is a few hundred bytes; a bigger reply is read no further


def add_judge_arguments(p, default_protocol: str, why: str) -> None:
    """The judge options of a scoring command line (``why``: why ``default_protocol`` is the default)."""
    p.add_argument("--judge-url", help="base URL of an OpenAI-compatible API, e.g. http://localhost:8000/v1")
    p.add_argument("--judge-model", help="passed to the API as it is and recorded with the results")
    p.add_argument("--judge-protocol", choices=sorted(PROTOCOLS), default=default_protocol,
                   help=f"whose request, parsing and aggregation (default: %(default)s, {why}; see "
                        f"moviechat/scoring/judge_protocols.py)")
    p.add_argument("--judge-key-env", default="OPENAI_API_KEY", help="environment variable holding the API key")
    p.add_argument("--judge-cache", help="JSONL cache of parsed judgements (default: OUT/judge_cache.jsonl)")
    p.add_argument("--judge-timeout", type=float, default=DEFAULT_TIMEOUT,
                   help="seconds for one request, its whole reply included (default: %(default)s)")
    p.add_argument("--judge-concurrency", type=int, default=DEFAULT_CONCURRENCY,
                   help="questions judged at once (default: %(default)s; the scores do not depend on it)")
    p.add_argument("--judge-allow-insecure", action="store_true",
                   help="send the API key to a judge URL that is neither https:// nor on this machine")


def check_judge_arguments(p, args) -> None:
    if args.judge_url and not args.judge_model:
        p.error("--judge-model is required with --judge-url (it is recorded with the results)")
    if args.judge_concurrency < 1:
        p.error(f"--judge-concurrency={args.judge_concurrency} must be >= 1")
    if not args.judge_timeout > 0 or args.judge_timeout == float("inf"):
        p.error(f"--judge-timeout={args.judge_timeout} must be a number of seconds > 0")


def judge_from_args(args, default_cache: Path) -> Optional["JudgeClient"]:
    """The judge of a scoring command line (``--judge-url``, ``--judge-model``, ``--judge-key-env``,
    ``--judge-protocol``, ``--judge-allow-insecure``), its key checked against the URL; None without a URL."""
    if not args.judge_url:
        return None
    key = os.environ.get(args.judge_key_env)
    check_judge_url(args.judge_url, key is not None, args.judge_allow_insecure)
    cache = Path(args.judge_cache) if args.judge_cache else default_cache
    return JudgeClient(args.judge_url, args.judge_model, cache, key, protocol=PROTOCOLS[args.judge_protocol],
                       concurrency=args.judge_concurrency, timeout=args.judge_timeout)


def _loopback(host: str) -> bool:
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _not_a_judgement(row: dict) -> Optional[str]:
    return None if isinstance(row.get("key"), str) and isinstance(row.get("reply"), str) else "not a judgement"


class JudgeCache:
    """Parsed judge replies by key, in a JSONL file: read at start, each new reply appended as one line under an
    exclusive lock (threads and processes), so lines never interleave; a half-written line (a killed run) is
    ignored and judged again."""

    def __init__(self, path: Path):
        self.path = path
        self.replies: dict[str, str] = {}
        self._lock = threading.Lock()
        if path.is_file():  # an unusable line is skipped (said): its judgement is requested again
            for row in read_jsonl(path, skip_bad=True, check=_not_a_judgement):
                self.replies[row["key"]] = row["reply"]

    def get(self, key: str) -> Optional[str]:
        return self.replies.get(key)

    def add(self, key: str, row: dict) -> None:
        line = json.dumps({"key": key, **row}) + "\n"
        with self._lock, held_lock(self.path) as f:  # whole lines, also beside another scoring process
            self.replies[key] = row["reply"]
            f.write(line)
            f.flush()


class JudgeFailure(Exception):
    """One attempt that got no usable reply; ``retry`` says whether asking again may help."""

    def __init__(self, reason: str, retry: bool = True, wait: Optional[float] = None):
        super().__init__(reason)
        self.reason, self.retry, self.wait = reason, retry, wait


class JudgeClient:
    """A judge behind any OpenAI-compatible ``/chat/completions`` endpoint, with a JSONL cache."""

    def __init__(self, base_url: str, model: str, cache: Path, api_key: Optional[str] = None, retries: int = 3,
                 timeout: float = DEFAULT_TIMEOUT, backoff: float = 1.0, protocol: JudgeProtocol = PROTOCOLS["lmms-eval"],
                 concurrency: int = DEFAULT_CONCURRENCY, max_reply_bytes: int = MAX_REPLY_BYTES):
        if concurrency < 1 or retries < 1:
            raise JudgeSettingError(f"judge concurrency={concurrency} and retries={retries} must be >= 1")
        self.url = base_url.rstrip("/") + "/chat/completions"
        self.model, self.api_key, self.protocol = model, api_key, protocol
        self.retries, self.timeout, self.backoff, self.concurrency = retries, timeout, backoff, concurrency
        self.max_reply_bytes = max_reply_bytes
        self.cache = JudgeCache(cache)
        self.reported: set[str] = set()  # the model names the server said it answered with
        self.requests = 0
        self.failures = 0
        self.reasons: Counter = Counter()  # why questions failed (their last attempt's reason)
        self._count = threading.Lock()
        self._http = httpx.Client(timeout=timeout, follow_redirects=False)

    def key(self, question: str, answer: str, prediction: str) -> str:
        return hashlib.sha256(json.dumps([self.protocol.name, self.model, question, answer, prediction]).encode()).hexdigest()

    def reply(self, question: str, answer: str, prediction: str) -> Optional[str]:
        """The judge's raw reply (cached), or None when every attempt failed."""
        return self.replies([(question, answer, prediction)], progress=False)[0]

    def replies(self, asked: Sequence[tuple[str, str, str]], progress: bool = True) -> list[Optional[str]]:
        """Replies to ``(question, answer, prediction)`` triples in order: cached ones at once, the rest
        ``concurrency`` at a time (the same question asked twice is requested once)."""
        keys = [self.key(*a) for a in asked]
        todo = {k: a for k, a in zip(keys, asked) if self.cache.get(k) is None}
        got: dict[str, Optional[str]] = {}
        judged, cached = 0, len(set(keys)) - len(todo)
        bar = tqdm(total=len(todo), desc="judge", disable=not progress or not todo, dynamic_ncols=True)
        with ThreadPoolExecutor(self.concurrency) as pool:
            for k, text in zip(todo, pool.map(lambda item: self._judge(*item), todo.items())):
                got[k] = text
                judged += text is not None
                bar.update(1)
                bar.set_postfix(judged=judged, failed=self.failures, cached=cached)
        bar.close()
        if progress and asked:
            print(f"judge: {judged} judged, {self.failures} failed, {cached} from the cache {self.cache.path}"
                  + (f"; failures: {dict(self.reasons)}" if self.reasons else ""), flush=True)
        return [self.cache.get(k) if k not in got else got[k] for k in keys]

    def _judge(self, key: str, asked: tuple[str, str, str]) -> Optional[str]:
        """One question: attempts until a reply parses (then cached) or the retries run out (a counted failure)."""
        payload = self.protocol.payload(self.model, *asked)
        reason = ""
        for attempt in range(self.retries):
            try:
                text, reported = self._post(payload)
            except JudgeFailure as e:
                reason = e.reason
                if not e.retry or attempt + 1 == self.retries:
                    break
                time.sleep(e.wait if e.wait is not None else self.backoff * 2**attempt)
                continue
            if self.protocol.verdict(text).status != "failed":  # parsed before it is kept; a failure never is
                self.cache.add(key, {"model": self.model, "protocol": self.protocol.name, "reply": text,
                                     "reported_model": reported})
            if reported:
                with self._count:
                    self.reported.add(str(reported))
            return text
        with self._count:
            self.failures += 1
            self.reasons[reason.split(":")[0]] += 1
        return None

    def _post(self, payload: dict) -> tuple[str, Optional[str]]:
        """One request: (reply text, the model the server names) or :class:`JudgeFailure`."""
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        with self._count:
            self.requests += 1
        try:
            response, body = self._exchange(payload, headers)
        except httpx.HTTPError as e:  # connection refused or dropped, timeout, short body: all retried
            raise JudgeFailure(f"transport: {type(e).__name__}") from None
        if response.is_redirect:
            raise JudgeFailure(f"redirect: {response.status_code} to {response.headers.get('location')!r} not followed "
                               f"(the request carries the API key)", retry=False)
        if response.status_code == 429 or response.status_code >= 500:
            raise JudgeFailure(f"status {response.status_code}", wait=retry_after(response.headers.get("retry-after")))
        if response.status_code >= 400:
            raise JudgeFailure(f"status {response.status_code}", retry=False)
        try:
            data = json.loads(body)
            text = data["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise JudgeFailure("reply: not an OpenAI chat completion") from None
        if not isinstance(text, str):
            raise JudgeFailure(f"reply: content is {type(text).__name__}, not text")
        if self.protocol.empty_is_failure and not text.strip():
            raise JudgeFailure("reply: empty")  # lmms-eval asks again
        return text, data.get("model") if isinstance(data, dict) else None


    def _exchange(self, payload: dict, headers: dict) -> tuple[httpx.Response, bytes]:
        """The response and its body, read within ``timeout`` seconds in all (httpx's timeout bounds each read
        only: a judge sending a byte a second would never end) and up to ``max_reply_bytes``."""
        deadline = time.monotonic() + self.timeout
        with self._http.stream("POST", self.url, json=payload, headers=headers) as response:
            body = bytearray()
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > self.max_reply_bytes:
                    raise JudgeFailure(f"reply: over {self.max_reply_bytes} bytes, read no further", retry=False)
                if time.monotonic() > deadline:
                    raise JudgeFailure(f"transport: no whole reply within {self.timeout:g} s")
        return response, bytes(body)


def retry_after(value: Optional[str]) -> Optional[float]:
    """Seconds to wait from a ``Retry-After`` header (seconds or an HTTP date), at most ``MAX_RETRY_AFTER``."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = email.utils.parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER)
