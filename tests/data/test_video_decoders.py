"""torchcodec as the decoder of feature extraction: the frames, timestamps and durations PyAV gives, and a
clear error at start where it cannot load."""

import sys
from fractions import Fraction

import numpy as np
import pytest

from helpers import torchcodec_or_skip, write_video
from moviechat.data import video
from moviechat.data.video import read_frames


@pytest.mark.parametrize("codec,fps", [("mpeg4", 8), ("libx264", Fraction(30000, 1001)), ("libx264", 24)])
@pytest.mark.parametrize("sampling", [{"fps": 1.0}, {"fps": 3.0}, {"num_frames": 7}, {}])
@pytest.mark.parametrize("one_pass", [True, False], ids=["one-pass", "two-pass"])
def test_torchcodec_decodes_the_frames_pyav_decodes(tmp_path, monkeypatch, codec, fps, sampling, one_pass):
    torchcodec_or_skip()
    if not one_pass:  # as where the guessed frames cannot be verified (a variable frame rate)
        monkeypatch.setattr(video, "_verified", lambda *args: None)
    path = write_video(tmp_path / "v.mp4", frames=50, fps=fps, size=48, codec=codec)
    a_frames, a_stamps, a_duration = read_frames(path, **sampling)
    b_frames, b_stamps, b_duration = read_frames(path, **sampling, decoder="torchcodec")
    assert a_frames.shape == b_frames.shape and np.array_equal(a_frames, b_frames)
    assert b_stamps == pytest.approx(a_stamps, abs=1e-6) and b_duration == pytest.approx(a_duration, abs=1e-6)


def test_a_guessed_frame_is_kept_only_when_it_is_the_first_from_its_target_time():
    end = 1.0
    assert video._verified([0.0, 0.5], [0.0, 0.5], [0.25, 0.25], end) == 2
    assert video._verified([0.0, 0.4], [0.0, 0.5], [0.25, 0.25], end) == 2  # 0.25 < 0.4 <= 0.5
    assert video._verified([0.0, 0.4], [0.0, 0.5], [0.05, 0.05], end) is None  # 0.45 may be a frame from 0.4 on
    assert video._verified([0.0, 0.3], [0.0, 0.25], [0.25, 0.25], end) is None  # began before 0.3, not the last
    assert video._verified([0.0, 0.9], [0.0, 0.75], [0.25, 0.25], end) == 1  # no frame from 0.9 on: dropped


def test_a_decoder_that_cannot_load_stops_extraction_at_start_naming_it(monkeypatch, capsys, tmp_path):
    from moviechat.prepare import extract_features

    monkeypatch.setitem(sys.modules, "torchcodec.decoders", None)  # as if torchcodec were not installed
    with pytest.raises(SystemExit) as stop:
        extract_features.parse(["--cfg", "x.yaml", "--videos", str(tmp_path), "--out", str(tmp_path / "o"),
                                "--decoder", "torchcodec"])
    assert stop.value.code == 2
    assert "--decoder torchcodec cannot load" in capsys.readouterr().err
    with pytest.raises(ValueError, match="decoder='ffmpeg'"):
        read_frames(tmp_path / "v.mp4", fps=1.0, decoder="ffmpeg")
