"""``samvolseg`` and the prompt reader under misuse (issue 14: 1, 7-10, 12-15).

Output paths are checked before any work (these tests name a model that does not exist: an output error
must come first); signals go to a real child process running the console entry point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import SAMVolSegmentLib.cli.main as cli
from SAMVolSegmentLib import io_utils
from SAMVolSegmentLib.cli.main import build_parser, main
from SAMVolSegmentLib.engine.prompts_io import read_prompts
from SAMVolSegmentLib.engine.session import MAX_CLICKS
from SAMVolSegmentLib.errors import InvalidPromptError

REPO = Path(__file__).resolve().parents[1]
NO_MODEL = ["--model", "no-such-model-file.pt"]
#: Child processes load the transparent test model instead of a bundled one (its weights change while it trains).
TRANSPARENT_MODEL = (f"sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
                     "from test_session_initial_mask import BallModel\n"
                     "cli.load_model_verbose = lambda model, device: BallModel()\n")


def run_segment(capsys, image, points, output, *extra):
    code = main(["segment", str(image), "--points", str(points), "--output", str(output), *NO_MODEL, *extra])
    return code, capsys.readouterr().err


# ---------------------------------------------------------------- 1: the output is the input
@pytest.mark.parametrize("spelling", ["same", "dotted", "symlink"])
def test_the_input_image_is_never_the_output(tmp_path, capsys, image, points, spelling):
    before = image.read_bytes()
    output = {"same": image, "dotted": tmp_path / "." / "sub" / ".." / image.name, "symlink": tmp_path / "link.nii.gz"}[
        spelling]
    if spelling == "symlink":
        output.symlink_to(image)
    (tmp_path / "sub").mkdir()
    code, err = run_segment(capsys, image, points, output)
    assert code == 2 and "is the input image" in err and len(err.strip().splitlines()) == 1
    assert image.read_bytes() == before


def test_a_run_whose_model_loads_still_never_writes_over_its_input(tmp_path, capsys, image, points, monkeypatch):
    """The data loss itself: with a model that loads, ``--output`` naming the image wrote the mask over the CT
    and exited 0."""
    from test_session_initial_mask import BallModel

    monkeypatch.setattr(cli, "load_model_verbose", lambda model, device: BallModel())
    before = image.read_bytes()
    for output in (image, tmp_path / "sub" / ".." / image.name):
        code = main(["segment", str(image), "--points", str(points), "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2 and "is the input image" in err and len(err.strip().splitlines()) == 1, err
        assert image.read_bytes() == before
    assert main(["segment", str(image), "--points", str(points), "--output", str(tmp_path / "m.nii.gz")]) == 0
    assert image.read_bytes() == before and (tmp_path / "m.nii.gz").is_file()


# ---------------------------------------------------------------- 8: output paths checked first
def test_output_path_errors_are_one_line_before_the_work(tmp_path, capsys, image, points):
    (tmp_path / "afile").write_text("x")
    (tmp_path / "x.nii.gz").mkdir()
    cases = {tmp_path / "afile" / "m.nii.gz": "not a folder", tmp_path / "x.nii.gz": "is a folder"}
    for output, message in cases.items():
        code, err = run_segment(capsys, image, points, output)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert "no-such-model" not in err  # refused before the model was looked up


@pytest.mark.parametrize("command", [["evaluate", "data-that-is-never-read", "--model", "none"], ["demo"]])
def test_an_output_folder_that_is_a_file_is_one_line_before_the_work(tmp_path, capsys, command):
    (tmp_path / "afile").write_text("x")
    for output in (tmp_path / "afile", tmp_path / "afile" / "out"):
        code = main([*command, "--output", str(output)])
        err = capsys.readouterr().err
        assert code == 2 and "is a file" in err and len(err.strip().splitlines()) == 1, err
    assert (tmp_path / "afile").read_text() == "x"


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write into any folder")
def test_an_unwritable_output_folder_is_one_line_before_the_work(tmp_path, capsys, image, points):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        code, err = run_segment(capsys, image, points, locked / "m.nii.gz")
    finally:
        locked.chmod(0o700)
    assert code == 2 and "cannot write" in err and "no-such-model" not in err


def test_a_folder_the_program_may_not_write_is_one_line_before_the_work(tmp_path, capsys, image, points, monkeypatch):
    """Also as root, who may write into a 0500 folder but not onto a read-only mount (os.access says no)."""
    locked = tmp_path / "read-only"
    locked.mkdir()
    real_access = os.access
    monkeypatch.setattr(io_utils.os, "access",
                        lambda path, mode: (not mode & os.W_OK) if Path(path) == locked else real_access(path, mode))
    code, err = run_segment(capsys, image, points, locked / "m.nii.gz")
    assert code == 2 and "cannot write into" in err and len(err.strip().splitlines()) == 1, err
    assert "no-such-model" not in err and not list(locked.iterdir())


# ---------------------------------------------------------------- 9: upper-case extensions
@pytest.mark.parametrize("name", ["m.NII.GZ", "m.Nii.Gz", "m.NRRD"])
def test_upper_case_extensions_are_refused_up_front(tmp_path, capsys, image, points, name):
    code, err = run_segment(capsys, image, points, tmp_path / name)
    assert code == 2 and "lower case" in err and "no-such-model" not in err
    assert not (tmp_path / name).exists()


# ---------------------------------------------------------------- 7: bounded model grid in the CLI
def test_a_volume_with_a_huge_model_grid_is_one_line_under_a_4_gb_limit(tmp_path, points):
    coarse = sitk.GetImageFromArray(np.random.default_rng(0).normal(0, 1, (48, 48, 48)).astype(np.float32))
    coarse.SetSpacing((20.0, 20.0, 20.0))
    path = tmp_path / "coarse.nii.gz"
    sitk.WriteImage(coarse, str(path))
    script = textwrap.dedent(f"""
        import resource, sys
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        import SAMVolSegmentLib.cli.main as cli
        {{transparent}}
        sys.exit(cli.main(["segment", {str(path)!r}, "--points", {str(points)!r}, "--output",
                       {str(tmp_path / "m.nii.gz")!r}, "--model", "clicknet-v1"]))
    """).replace("{transparent}", TRANSPARENT_MODEL)
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 2, done.stderr
    assert "model grid" in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert time.perf_counter() - start < 60


# ---------------------------------------------------------------- 10, 14: prompt files
@pytest.mark.parametrize("markups", [[{"type": "Fiducial", "controlPoints": [{"position": [1, 2, 3]}]}, 5], {},
                                     [{"type": "Fiducial", "controlPoints": [None]}],
                                     [{"type": "Fiducial", "controlPoints": {"a": 1}}], "abc"],
                         ids=["number-markup", "object", "null-point", "points-object", "string"])
def test_malformed_markups_are_a_prompt_error(tmp_path, markups):
    path = tmp_path / "p.mrk.json"
    path.write_text(json.dumps({"markups": markups}))
    with pytest.raises(InvalidPromptError, match="Cannot read prompts from"):
        read_prompts(path)


def test_a_folder_given_as_prompt_file_is_called_a_folder(tmp_path):
    with pytest.raises(InvalidPromptError, match="is a folder"):
        read_prompts(tmp_path)


# ---------------------------------------------------------------- 12: bounded prompt files
def test_a_prompt_file_beyond_the_click_limit_is_refused_at_once(tmp_path, capsys, image):
    many = tmp_path / "many.csv"
    many.write_text("".join(f"{i % 5},0,0,1\n" for i in range(10_000)))
    start = time.perf_counter()
    code, err = run_segment(capsys, image, many, tmp_path / "m.nii.gz")
    assert code == 2 and f"at most {MAX_CLICKS}" in err and "10000 points" in err
    assert time.perf_counter() - start < 10
    segment = build_parser()._subparsers._group_actions[0].choices["segment"]
    assert f"at most {MAX_CLICKS}" in " ".join(segment.format_help().split())


# ---------------------------------------------------------------- 13, 15: Ctrl-C
def start_cli(tmp_path, image, points, patch: str) -> subprocess.Popen:
    """The console entry point (``sys.exit(main())``) in a child, after ``patch`` (which prints READY)."""
    argv = ["samvolseg", "segment", str(image), "--points", str(points), "--output", str(tmp_path / "m.nii.gz"),
            "--model", "clicknet-v1"]
    # A shell starts the program with Ctrl-C at its default action; the test process may not (an ignored signal
    # is inherited by children, and libraries loaded by earlier tests can set it), so the child restores it.
    script = (f"import signal, sys, threading, time\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"import SAMVolSegmentLib.cli.main as cli\n{TRANSPARENT_MODEL}\n{patch}\n"
              f"sys.argv = {argv!r}\nsys.exit(cli.main())\n")
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO)


def interrupt_when_ready(child: subprocess.Popen, timeout: float = 120.0):
    """Wait for READY on the child's stdout, send SIGINT, return (exit code, seconds to exit, stderr)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if "READY" in line or not line:
            break
    child.send_signal(signal.SIGINT)
    sent = time.perf_counter()
    try:
        _, err = child.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        child.kill()
        _, err = child.communicate()
    return child.returncode, time.perf_counter() - sent, err


def test_ctrl_c_during_resampling_exits_at_once(tmp_path, image, points):
    patch = """
import SAMVolSegmentLib.engine.session as session
def slow_resample(volume):
    print("READY", flush=True)
    time.sleep(20)  # a long resampling
session.resample_to_model_grid = slow_resample
"""
    code, seconds, err = interrupt_when_ready(start_cli(tmp_path, image, points, patch))
    assert code == 130 and err.strip().splitlines() == ["samvolseg: interrupted"], err
    assert seconds < 5


def test_ctrl_c_during_start_up_is_one_line_and_130(tmp_path, image, points):
    patch = """
real_build_parser = cli.build_parser
def slow_build_parser():
    print("READY", flush=True)
    time.sleep(20)  # importing torch and the subcommands
    return real_build_parser()
cli.build_parser = slow_build_parser
"""
    code, seconds, err = interrupt_when_ready(start_cli(tmp_path, image, points, patch))
    assert code == 130 and err.strip().splitlines() == ["samvolseg: interrupted"], err


def test_ctrl_c_after_the_write_is_one_line_and_130(tmp_path, image, points):
    patch = """
import SAMVolSegmentLib.io_utils as io_utils
real_write = io_utils.write_image
def write_then_linger(image, path):
    out = real_write(image, path)
    # Something still running at exit (a library's helper thread): the interpreter joins it after main().
    threading.Thread(target=time.sleep, args=(20,)).start()
    print("READY", flush=True)
    return out
io_utils.write_image = write_then_linger
"""
    code, seconds, err = interrupt_when_ready(start_cli(tmp_path, image, points, patch))
    assert code == 130 and err.strip().splitlines() == ["samvolseg: interrupted"], err
    assert (tmp_path / "m.nii.gz").is_file()
    assert seconds < 5


def test_ctrl_c_while_the_error_line_is_printed_is_one_line_and_130(tmp_path, image, points):
    """A Ctrl-C outside the work (here: while the one-line error is written) used to escape ``main`` as a
    KeyboardInterrupt traceback with exit -2; the program's handler now exits 130 at once. The same window
    existed between the end of the work and the handler that used to be installed after it."""
    patch = """
import os
class Stderr:
    def __init__(self, real):
        self.real, self.error = real, False
    def write(self, text):
        n = self.real.write(text)
        self.error = self.error or text.startswith("samvolseg: error")
        if self.error and text.endswith("\\n"):
            self.error = False
            self.real.flush()
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C right after the error line
        return n
    def flush(self):
        self.real.flush()
sys.stderr = Stderr(sys.stderr)
"""
    argv = ["samvolseg", "segment", str(image), "--points", str(points), "--output", str(image)]  # refused
    script = (f"import signal, sys\nsignal.signal(signal.SIGINT, signal.default_int_handler)\n"
              f"import SAMVolSegmentLib.cli.main as cli\n{patch}\nsys.argv = {argv!r}\nsys.exit(cli.main())\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 130 and "Traceback" not in done.stderr, done.stderr
    assert len(lines) == 2 and "is the input image" in lines[0] and lines[1] == "samvolseg: interrupted", lines


def test_an_ignored_ctrl_c_stays_ignored(tmp_path, image, points):
    """A program started with SIGINT ignored (a background job, nohup) keeps it ignored, before and after."""
    argv = ["samvolseg", "segment", str(image), "--points", str(points), "--output", str(image)]  # refused
    script = ("import signal, sys\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nimport SAMVolSegmentLib.cli.main as cli\n"
              f"sys.argv = {argv!r}\ncode = cli.main()\nprint(code, signal.getsignal(signal.SIGINT) is signal.SIG_IGN)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.stdout.split() == ["2", "True"], done.stdout + done.stderr
