"""``supergen upscale``: frame count, frame rate and audio kept; bad inputs refused in one line, no file left."""

import contextlib
import subprocess

import imageio_ffmpeg
import pytest

from supergen.cli import main
from supergen.upscale_video import padded_frames, probe, target_size

FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_clip(path, frames: int, fps: int = 12, size: str = "96x48", audio: bool = True):
    """A test pattern of ``frames`` frames, with a 440 Hz tone track as long as the video."""
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:sample_rate=16000", "-c:a", "aac", "-shortest"] if audio else []
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", f"testsrc=size={size}:rate={fps}",
                    *tone[:4], "-frames:v", str(frames), "-c:v", "libx264", "-pix_fmt", "yuv420p", *tone[4:], str(path)], check=True)
    return path


def streams(path) -> str:
    return subprocess.run([FFMPEG, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr


def test_upscale_keeps_frame_count_fps_and_audio(tmp_path, capsys):
    # 10 frames: not a count Wan's VAE takes (4k+1), so it is padded to 13 and cut back.
    clip = make_clip(tmp_path / "clip.mp4", 10, fps=12)
    source = probe(clip)
    assert (source.frames, source.fps, source.size, source.has_audio) == (10, 12.0, (48, 96), True)
    out = tmp_path / "out.mp4"
    assert main(["upscale", str(clip), "--scale", "2", "-o", str(out), "-q", "refine.num_inference_steps=2"]) == 0
    got = probe(out)
    assert (got.frames, got.fps, got.size, got.has_audio) == (10, 12.0, (96, 192), True)
    assert "Audio: aac" in streams(out)
    assert "10 frames at 12 fps, audio copied" in capsys.readouterr().out


def test_sizes_and_padding():
    assert target_size((48, 96), None, None, 3) == (144, 288)
    assert target_size((48, 96), 96, None, None) == (96, 192)  # aspect kept
    assert target_size((48, 96), None, 400, None) == (200, 400)
    assert [padded_frames(n, 4) for n in (2, 5, 10, 33, 34)] == [5, 5, 13, 33, 37]


def _bad_inputs(tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video")
    audio_only = tmp_path / "audio.mp4"
    subprocess.run([FFMPEG, "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi", "-i", "sine=frequency=440:duration=1",
                    "-c:a", "aac", str(audio_only)], check=True)
    clip = make_clip(tmp_path / "clip.mp4", 10)
    broken = tmp_path / "broken.mp4"  # an mp4 whose video data is cut away: ffmpeg cannot decode it
    broken.write_bytes(clip.read_bytes()[:600])
    return {
        "not a video": ([str(text), "--scale", "2"], "is not a video ffmpeg can decode"),
        "zero frames": ([str(audio_only), "--scale", "2"], str(audio_only)),
        "one frame": ([str(make_clip(tmp_path / "one.mp4", 1, audio=False)), "--scale", "2"], "has 1 frame"),
        "unreadable": ([str(broken), "--scale", "2"], "broken.mp4"),
        "smaller target": ([str(clip), "--height", "32"], "smaller than the input's 48x96"),
        "missing": ([str(tmp_path / "nope.mp4"), "--scale", "2"], "does not exist"),
    }


def test_bad_inputs_get_one_line_and_leave_no_file(tmp_path, capsys):
    for name, (args, expected) in _bad_inputs(tmp_path).items():
        out = tmp_path / "out" / f"{name.replace(' ', '_')}.mp4"
        out.parent.mkdir(exist_ok=True)
        assert main(["upscale", *args, "-o", str(out), "-q"]) == 2, name
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("error: ") and expected in err, (name, err)
        assert list(out.parent.iterdir()) == [], name


@pytest.mark.parametrize("args,expected", [(["--scale", "5"], "invalid choice"), (["--scale", "2", "--height", "96"], "not both")])
def test_bad_targets(tmp_path, capsys, args, expected):
    clip = make_clip(tmp_path / "clip.mp4", 5, audio=False)
    with pytest.raises(SystemExit) if "invalid" in expected else contextlib.nullcontext():
        code = main(["upscale", str(clip), *args, "-o", str(tmp_path / "o.mp4")])
        assert code == 2
    assert expected in capsys.readouterr().err



def test_batch_rows_take_an_input_video(tmp_path):
    """A jobs row with ``input`` is an upscale: its frame count and fps from the file, its size from
    ``scale``; a bad input is that row's one-line error."""
    import json

    from supergen.config import load_config
    from supergen.jobs import parse_jobs

    make_clip(tmp_path / "clip.mp4", 10, fps=12)
    (tmp_path / "notes.mp4").write_text("not a video")
    rows = [{"input": "clip.mp4", "scale": 2, "name": "up"}, {"input": "notes.mp4", "scale": 2}, {"prompt": "x", "scale": 2}]
    path = tmp_path / "jobs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    parsed = parse_jobs(path, load_config("tiny"))
    (job,) = parsed.jobs
    assert job.source.frames == 10 and (job.config.job.height, job.config.job.width, job.config.output.fps) == (96, 192, 12.0)
    assert job.config.job.prompt == ""
    assert [b.line for b in parsed.bad] == [2, 3]
    assert "not a video ffmpeg can decode" in parsed.bad[0].error and "give it with an input video" in parsed.bad[1].error
