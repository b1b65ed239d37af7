"""``samvolseg --version`` / ``--help`` / ``COMMAND --help`` start fast: no torch (nor SimpleITK or scipy).

Each check runs in a fresh interpreter: this test process has imported torch long ago.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

HEAVY = ("torch", "SimpleITK", "scipy")


def test_version_and_every_help_page_import_no_heavy_module():
    script = textwrap.dedent(f"""
        import argparse, contextlib, io, sys
        from SAMVolSegmentLib.cli.main import build_parser, main

        def commands(parser, prefix):
            for action in parser._actions:
                if isinstance(action, argparse._SubParsersAction):
                    for name, child in action.choices.items():
                        yield prefix + [name]
                        yield from commands(child, prefix + [name])

        argvs = [["--version"], ["--help"]] + [argv + ["--help"] for argv in commands(build_parser(), [])]
        for argv in argvs:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                try:
                    main(argv)
                except SystemExit as exc:
                    assert exc.code == 0, (argv, exc.code)
            assert "usage: samvolseg" in out.getvalue() or argv == ["--version"], argv
        print(len(argvs), sorted(m for m in {HEAVY!r} if m in sys.modules))
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    count, heavy = done.stdout.strip().split(" ", 1)
    assert int(count) >= 13  # --version, --help and each (sub)command: segment ... serve, models list, ...
    assert heavy == "[]", f"parsing imported {heavy}; import it inside the command function instead"


def test_the_installed_program_prints_its_version_without_torch():
    program = Path(sys.executable).with_name("samvolseg")
    if not program.is_file():
        pytest.skip("samvolseg is not installed next to this interpreter (pip install -e .)")
    # PYTHONPROFILEIMPORTTIME makes the interpreter list every module it imports on stderr.
    done = subprocess.run([str(program), "--version"], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPROFILEIMPORTTIME": "1"})
    assert done.returncode == 0 and done.stdout.startswith("samvolseg "), done.stdout + done.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")}
    assert "SAMVolSegmentLib.cli.main" in imported  # the listing works, so an absence below means something
    assert not imported & set(HEAVY), sorted(imported & set(HEAVY))
