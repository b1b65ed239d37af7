"""Shared fixtures: the development data and reference fixtures live in ../shared (never in the repo)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    path = SHARED / "data"
    if not path.is_dir():
        pytest.skip(f"development cases not found at {path}")
    return path


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    path = SHARED / "fixtures"
    if not path.is_dir():
        pytest.skip(f"reference fixtures not found at {path}")
    return path


@pytest.fixture(scope="module")
def self_signed(tmp_path_factory):
    """(certificate, key) of a self-signed TLS certificate for 127.0.0.1, made with openssl (remote tests)."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl not found (needed to make a test certificate)")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


@pytest.fixture()
def image(tmp_path) -> Path:
    """A small real image file (12 × 11 × 10 voxels of 1 mm, origin 0; random values) for the CLI and batch tests."""
    array = np.random.default_rng(0).normal(0, 1, (10, 11, 12)).astype(np.float32)
    path = tmp_path / "ct.nii.gz"
    sitk.WriteImage(sitk.GetImageFromArray(array), str(path))
    return path


@pytest.fixture()
def points(tmp_path) -> Path:
    """A prompt file with one positive click inside :func:`image` (RAS -5, -5, 5 is LPS 5, 5, 5)."""
    path = tmp_path / "p.csv"
    path.write_text("-5,-5,5,1\n")
    return path
