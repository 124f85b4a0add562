"""The judge client against misbehaving servers on 127.0.0.1: a redirect never receives the API key, replies
whose content is not text and dropped or short replies are counted failures (never a crash, never cached, asked
again on a re-run), 429 waits for Retry-After, a stalled judge times out, and judging runs concurrently with
the same scores as one question at a time."""

import http.server
import json
import threading
import time

import pytest

from judge_stub import serving
from moviechat.scoring.judge import JudgeClient, retry_after
from moviechat.scoring.judge_protocols import PROTOCOLS

GOOD = "{'pred': 'yes', 'score': 4}"
ASKED = [(f"question {i}", "answer", f"prediction {i}") for i in range(6)]


class Judge(http.server.BaseHTTPRequestHandler):
    """Answers by a rule of the class (``behave(handler, body)``); records requests and their headers."""

    requests: list = []
    in_flight = 0
    most_in_flight = 0
    lock = threading.Lock()

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cls = type(self)
        with cls.lock:
            cls.requests.append({"auth": self.headers.get("Authorization"), "body": body})
            cls.in_flight += 1
            cls.most_in_flight = max(cls.most_in_flight, cls.in_flight)
        self.answered = False
        try:
            self.behave(body)
        finally:
            self.leave_flight()

    def leave_flight(self):
        """A request is in flight until its reply starts: once the client can read the reply it may send its
        next request, before this handler returns (counting until the return saw two at concurrency 1)."""
        if not self.answered:
            self.answered = True
            with type(self).lock:
                type(self).in_flight -= 1

    def send_response(self, code, message=None):
        self.leave_flight()
        super().send_response(code, message)

    def send_json(self, data, status=200, headers=()):
        raw = json.dumps(data).encode()
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def content(self, text):
        self.send_json({"model": "j", "choices": [{"message": {"content": text}}]})

    def log_message(self, *args):
        pass


def judge(kind, **attrs):
    return type(kind.__name__, (kind,), {"requests": [], "in_flight": 0, "most_in_flight": 0, **attrs})


def question_number(body) -> int:
    return int(body["messages"][1]["content"].split("Question: question ")[1].split("\n")[0])


def client(url, tmp_path, **kw):
    kw = {"retries": 2, "timeout": 5.0, "backoff": 0.0, "protocol": PROTOCOLS["ours"]} | kw
    return JudgeClient(url, "j", tmp_path / "cache.jsonl", **kw)


class Redirecting(Judge):
    target = ""

    def behave(self, body):
        self.send_response(302)
        self.send_header("Location", self.target)
        self.send_header("Content-Length", "0")
        self.end_headers()


def test_a_redirect_is_not_followed_and_the_key_never_reaches_its_target(tmp_path):
    elsewhere = judge(Judge, behave=lambda self, body: self.content(GOOD))
    with serving(elsewhere) as target_url:
        redirecting = judge(Redirecting, target=target_url + "/chat/completions")
        with serving(redirecting) as url:
            c = client(url, tmp_path, api_key="sk-secret")
            assert c.replies(ASKED[:2]) == [None, None]
    assert elsewhere.requests == []  # not even a request without the key
    assert all(r["auth"] == "Bearer sk-secret" for r in redirecting.requests) and len(redirecting.requests) == 2
    assert c.failures == 2 and set(c.reasons) == {"redirect"} and not (tmp_path / "cache.jsonl").exists()


class BadContents(Judge):
    def behave(self, body):
        n = question_number(body)
        if n == 0:
            self.send_json({"choices": [{"message": {"content": {"pred": "yes", "score": 5}}}]})  # an object
        elif n == 1:
            self.send_json({"choices": [{"message": {"content": None}}]})
        elif n == 2:
            self.close_connection = True  # drops the connection without a reply
        elif n == 3:
            self.send_response(200)
            self.send_header("Content-Length", "500")  # promises more bytes than it sends
            self.end_headers()
            self.wfile.write(b'{"choices": [')
            self.close_connection = True
        else:
            self.content(GOOD)


def test_bad_replies_are_counted_failures_never_cached_and_asked_again_by_a_rerun(tmp_path):
    bad = judge(BadContents)
    with serving(bad) as url:
        first = client(url, tmp_path)
        replies = first.replies(ASKED)
    assert replies == [None, None, None, None, GOOD, GOOD]
    assert first.failures == 4 and set(first.reasons) == {"reply", "transport"}
    cached = [json.loads(x)["reply"] for x in (tmp_path / "cache.jsonl").read_text().splitlines()]
    assert cached == [GOOD, GOOD]
    good = judge(Judge, behave=lambda self, body: self.content(GOOD))
    with serving(good) as url:
        again = client(url, tmp_path)
        assert again.replies(ASKED) == [GOOD] * 6
    assert sorted(question_number(r["body"]) for r in good.requests) == [0, 1, 2, 3]  # exactly the failed ones


class TooMany(Judge):
    def behave(self, body):
        if len(type(self).requests) == 1:
            self.send_json({"error": "slow down"}, status=429, headers=[("Retry-After", "1")])
        else:
            self.content(GOOD)


def test_429_is_retried_after_the_wait_the_server_asks_for(tmp_path):
    server = judge(TooMany)
    with serving(server) as url:
        c = client(url, tmp_path, backoff=0.0)
        start = time.monotonic()
        assert c.reply(*ASKED[0]) == GOOD
        waited = time.monotonic() - start
    assert len(server.requests) == 2 and c.failures == 0
    assert waited >= 0.9  # Retry-After: 1 honoured (a lower bound, not a speed claim)
    assert retry_after("2") == 2.0 and retry_after("nonsense") is None and retry_after("99999") == 300.0


class Stalling(Judge):
    def behave(self, body):
        time.sleep(1.5)  # three times the client's timeout
        self.content(GOOD)


def test_a_stalled_judge_times_out_into_a_counted_failure(tmp_path):
    with serving(judge(Stalling)) as url:
        c = client(url, tmp_path, retries=1, timeout=0.5)
        assert c.reply(*ASKED[0]) is None
    assert c.failures == 1 and set(c.reasons) == {"transport"}


class Slow(Judge):
    def behave(self, body):
        time.sleep(0.1)
        n = question_number(body)
        self.content("{'pred': '%s', 'score': %d}" % ("yes" if n % 2 else "no", n % 6))


@pytest.fixture
def threaded(monkeypatch):
    """The stub server handling requests in threads, as a real judge service does."""
    import judge_stub

    monkeypatch.setattr(judge_stub.http.server, "HTTPServer", http.server.ThreadingHTTPServer)


def test_concurrent_judging_gives_the_scores_of_one_at_a_time(tmp_path, threaded):
    asked = [(f"question {i}", "answer", f"prediction {i}") for i in range(16)]
    one, many = judge(Slow), judge(Slow)
    with serving(one) as url:
        alone = client(url, tmp_path / "a", concurrency=1).replies(asked)
    with serving(many) as url:
        together = client(url, tmp_path / "b", concurrency=8).replies(asked)
    assert together == alone and None not in alone
    assert one.most_in_flight == 1 and many.most_in_flight >= 4  # several questions in flight at once


def test_two_clients_appending_to_one_cache_leave_only_whole_lines(tmp_path, threaded):
    asked = [(f"question {i}", "answer", f"prediction {i}") for i in range(40)]
    with serving(judge(Judge, behave=lambda self, body: self.content(GOOD * 20))) as url:
        clients = [client(url, tmp_path, concurrency=8) for _ in range(2)]
        workers = [threading.Thread(target=c.replies, args=(asked,)) for c in clients]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    lines = (tmp_path / "cache.jsonl").read_text().splitlines()
    assert len(lines) == 80 and all(json.loads(x)["reply"] == GOOD * 20 for x in lines)
    assert len(client("http://127.0.0.1:9", tmp_path).cache.replies) == 40


class Huge(Judge):
    def behave(self, body):
        self.content("{'pred': 'yes', 'score': 4}" + " " * (2 << 20))  # a valid completion of 2 MiB


def test_a_reply_over_the_size_limit_is_a_counted_failure_read_no_further_and_never_cached(tmp_path):
    server = judge(Huge)
    with serving(server) as url:
        c = client(url, tmp_path)
        assert c.reply(*ASKED[0]) is None
    assert c.failures == 1 and set(c.reasons) == {"reply"} and len(server.requests) == 1  # not asked again
    assert not (tmp_path / "cache.jsonl").exists()


class Trickling(Judge):
    def behave(self, body):
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        for _ in range(100):  # a byte every 0.1 s: each read is quick, the whole reply is not (bounded: 10 s)
            try:
                self.wfile.write(b" ")
                self.wfile.flush()
            except OSError:
                return
            time.sleep(0.1)


def test_a_judge_that_trickles_its_reply_times_out_in_total_time(tmp_path, threaded):
    with serving(judge(Trickling)) as url:
        c = client(url, tmp_path, retries=1, timeout=1.0)
        start = time.monotonic()
        assert c.reply(*ASKED[0]) is None
        took = time.monotonic() - start
    assert c.failures == 1 and set(c.reasons) == {"transport"}
    assert took < 6  # the 1 s bound holds for the whole reply (read by read it would take 10 s)
