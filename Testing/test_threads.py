"""The thread policy: encoder and decoder thread counts, their sources, and OpenMP's idle policy."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from SAMVolSegmentLib import InteractiveSession, load_model, lps_to_ras
from SAMVolSegmentLib.cli.main import build_parser
from SAMVolSegmentLib.engine.predictor import Predictor
from SAMVolSegmentLib.engine.threads import ENV_THREADS, ThreadPolicy, available_cpus, torch_threads


@pytest.mark.parametrize(("text", "expected"), [("2", (2, 2)), ("1", (1, 1)), ("3", (3, 2)), ("4,1", (4, 1)), (" 3 , 3 ", (3, 3))])
def test_parse(text, expected):
    policy = ThreadPolicy.parse(text)
    assert (policy.encoder, policy.decoder) == expected
    assert ThreadPolicy.parse(str(policy)) == policy


@pytest.mark.parametrize("text", ["0", "-1", "a", "2,0", "1,2,3", "", "2.5", "true"])
def test_parse_refuses_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="N or ENCODER,DECODER"):
        ThreadPolicy.parse(text)


def test_a_policy_refuses_bad_counts():
    with pytest.raises(ValueError, match="encoder"):
        ThreadPolicy(encoder=0, decoder=1)
    with pytest.raises(ValueError, match="decoder"):
        ThreadPolicy(encoder=1, decoder=True)


def test_default_uses_the_available_cpus_for_the_encoder_and_up_to_two_for_the_decoder(monkeypatch):
    monkeypatch.delenv(ENV_THREADS, raising=False)
    policy = ThreadPolicy.resolve()
    assert policy == ThreadPolicy.default()
    assert policy.encoder == min(available_cpus(), 8) and policy.decoder == min(policy.encoder, 2)


def test_explicit_beats_environment_beats_default(monkeypatch):
    monkeypatch.setenv(ENV_THREADS, "3,2")
    assert ThreadPolicy.resolve() == ThreadPolicy(3, 2)
    assert ThreadPolicy.resolve(5) == ThreadPolicy(5, 2)
    assert ThreadPolicy.resolve("1,1") == ThreadPolicy(1, 1)
    monkeypatch.setenv(ENV_THREADS, "many")
    with pytest.raises(ValueError, match=ENV_THREADS):
        ThreadPolicy.resolve()


def test_torch_threads_restores_the_previous_count():
    before = torch.get_num_threads()
    other = 1 if before != 1 else 2
    with torch_threads(other):
        assert torch.get_num_threads() == other
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError), torch_threads(other):
        raise RuntimeError("restored even when the block fails")
    assert torch.get_num_threads() == before


def test_the_predictor_encodes_and_decodes_with_their_own_thread_counts():
    """The bundled model, instrumented: the thread count torch reports inside each call."""
    model = load_model("default")
    seen = {}
    encode, decode = model.encode_image, model.decode_prompts

    def encode_image(*args, **kwargs):
        seen["encoder"] = torch.get_num_threads()
        return encode(*args, **kwargs)

    def decode_prompts(*args, **kwargs):
        seen["decoder"] = torch.get_num_threads()
        return decode(*args, **kwargs)

    model.encode_image, model.decode_prompts = encode_image, decode_prompts
    predictor = Predictor(model, threads="2,1")
    embedding = predictor.embed(np.zeros((128, 128, 128), np.float32))
    predictor.predict(embedding, np.array([[64.0, 64.0, 64.0]]), np.array([True]))
    assert seen == {"encoder": 2, "decoder": 1}
    before = torch.get_num_threads()
    predictor.threads = ThreadPolicy(1, 2)
    predictor.predict(embedding, np.array([[64.0, 64.0, 64.0]]), np.array([True]))
    assert seen["decoder"] == 2 and torch.get_num_threads() == before


def test_a_session_passes_its_threads_to_the_predictor():
    image = sitk.GetImageFromArray(np.pad(np.full((8, 12, 12), 100, np.float32), 10))
    session = InteractiveSession(load_model("default"), threads="1,1")
    assert session.predictor.threads == ThreadPolicy(1, 1)
    session.set_volume(image)
    assert session.add_click(lps_to_ras(image.TransformIndexToPhysicalPoint((16, 16, 14))), True).mask.any()
    session.close()


def test_cli_threads_option(monkeypatch):
    parser = build_parser()
    for command in (["segment", "ct.nii.gz", "--points", "p.csv", "-o", "m.nii.gz"], ["demo"], ["evaluate", "d"],
                    ["serve"]):
        assert parser.parse_args([*command, "--threads", "2,1"]).threads == ThreadPolicy(2, 1)
        assert parser.parse_args(command).threads is None
    with pytest.raises(SystemExit):
        parser.parse_args(["demo", "--threads", "0"])


def test_cli_threads_reach_every_predictor(tmp_path):
    """``samvolseg demo --threads 1,1`` in a real process: the environment its Predictors read says 1,1."""
    script = ("import os, sys\nfrom SAMVolSegmentLib.cli import main as cli\n"
              "from SAMVolSegmentLib.engine import predictor\n"
              "made = []\norig = predictor.Predictor.__init__\n"
              "def init(self, *a, **k):\n    orig(self, *a, **k)\n    made.append(str(self.threads))\n"
              "predictor.Predictor.__init__ = init\n"
              f"code = cli.main(['demo', '--clicks', '1', '-o', {str(tmp_path)!r}, '--threads', '1,1'])\n"
              "print(code, made)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                            env={k: v for k, v in os.environ.items() if k != ENV_THREADS})
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith("0 [") and "'1,1'" in last and "'2," not in last, result.stdout + result.stderr


def _fresh(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env={**clean, **env})
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_importing_the_package_first_makes_idle_openmp_threads_sleep():
    assert _fresh("import os, SAMVolSegmentLib; print(os.environ.get('OMP_WAIT_POLICY'))") == "PASSIVE"


def test_the_user_s_openmp_settings_and_an_earlier_torch_are_left_alone():
    assert _fresh("import os, SAMVolSegmentLib; print(os.environ['OMP_WAIT_POLICY'])", OMP_WAIT_POLICY="ACTIVE") \
        == "ACTIVE"
    assert _fresh("import os, SAMVolSegmentLib; print(os.environ.get('OMP_WAIT_POLICY'))", GOMP_SPINCOUNT="1000") \
        == "None"
    assert _fresh("import os, torch, SAMVolSegmentLib; print(os.environ.get('OMP_WAIT_POLICY'))") == "None"
