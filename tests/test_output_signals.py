"""SIGTERM (what ``kill`` and job schedulers send) while a video is being encoded: handled as Ctrl-C."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap

#: A process that encodes through supergen's writer with the CLI's signal handling, and then waits
#: for the next frames (a render still decoding them) once the encoder holds the first ones.
ENCODING = textwrap.dedent("""
    import sys, time
    import numpy as np
    from supergen.cli import interrupt_on_sigterm
    from supergen.videoio import write_video

    interrupt_on_sigterm()

    def frames():
        yield np.full((4, 64, 64, 3), 100, np.uint8)
        print("encoding", flush=True)
        time.sleep(600)
        yield np.full((4, 64, 64, 3), 100, np.uint8)

    try:
        write_video(sys.argv[1], frames())
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
""")


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(c) for c in f.read().split()]


def running(pid: int) -> bool:
    """Whether ``pid`` is alive (a zombie, dead and waiting to be reaped, is not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_sigterm_while_encoding_leaves_no_file_and_no_encoder(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", ENCODING, str(tmp_path / "out.mp4")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "encoding", proc.stderr.read()
        encoders = children(proc.pid)
        assert len(encoders) == 1 and running(encoders[0])  # ffmpeg, holding the first frames
        assert [p.name for p in tmp_path.iterdir()][0].startswith(".out.")  # the temporary file it writes
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130 and err.strip() == "error: interrupted", err
    assert list(tmp_path.iterdir()) == []  # no hidden .out.*.mp4, no out.mp4
    assert not running(encoders[0])  # killed (at most a zombie until init reaps it), not finishing the file
