"""Batch segmentation on real development cases: identical masks serially, on 2 local processes and on a Dask
LocalCluster; resume after a crash or a killed worker; one clear line per bad manifest, file or prompt file.

The default model is being retrained while these tests may run (its weights file is replaced), so every test
uses a snapshot copy of it and compares execution modes with each other, never with reference masks.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from SAMVolSegmentLib.batch import (
    BatchCase,
    ManifestError,
    read_manifest,
    run_batch,
    segment,
    segment_cases,
    write_manifest,
)
from SAMVolSegmentLib.cli.main import main
from SAMVolSegmentLib.engine.geometry import VolumeGeometry
from SAMVolSegmentLib.errors import InvalidPromptError
from SAMVolSegmentLib.model.registry import resolve_model_path
from SAMVolSegmentLib.tools.evaluation import deepest_point, index_to_ras

REPO = Path(__file__).resolve().parents[1]
#: Small real cases (name, label value or None for label > 0): a few seconds each on one CPU thread.
CASES = [
    ("mr_msd_hippocampus_003", None),
    ("mr_sct_t2_spinalcord", None),
    ("ct_totalseg_example_multiorgan", 5),
    ("ct_msd_spleen2_spleen", None),
]


@pytest.fixture(scope="module")
def model_path(tmp_path_factory) -> Path:
    """A frozen copy of the default model (training replaces the original every few minutes)."""
    path = tmp_path_factory.mktemp("model") / "default_snapshot.pt"
    shutil.copyfile(resolve_model_path("default"), path)
    return path


def target_click_ras(case_dir: Path, label_value):
    """RAS mm of the target's deepest voxel (the evaluation's first simulated click)."""
    image = sitk.ReadImage(str(case_dir / "image.nii.gz"))
    label = sitk.GetArrayFromImage(sitk.ReadImage(str(case_dir / "label.nii.gz")))
    target = label > 0 if label_value is None else label == label_value
    index = deepest_point(target, image.GetSpacing()[::-1])
    return index_to_ras(VolumeGeometry.from_sitk(image), index)


def write_prompt_file(path: Path, ras, fmt: str) -> Path:
    """One positive click at ``ras`` as CSV, simple JSON or a Slicer markups file (LPS, Slicer's default)."""
    r, a, s = (float(v) for v in ras)
    if fmt == "csv":
        path.write_text(f"r,a,s,positive\n{r},{a},{s},1\n")
    elif fmt == "json":
        path.write_text(json.dumps({"points": [{"ras": [r, a, s], "positive": True}]}))
    else:
        path.write_text(json.dumps({"markups": [{"type": "Fiducial", "coordinateSystem": "LPS", "controlPoints": [
            {"label": "P-1", "position": [-r, -a, s], "positionStatus": "defined"}]}]}))
    return path


@pytest.fixture(scope="module")
def cohort(shared_data_dir, tmp_path_factory):
    """A manifest folder: prompt files (deepest point of each target, three formats) and one DICOM image."""
    from test_cli import write_dicom_series

    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for number, (name, value) in enumerate(CASES):
        case_dir = shared_data_dir / name
        fmt = ("csv", "json", "mrk.json")[number % 3]
        prompts = write_prompt_file(root / f"{name}.{fmt}", target_click_ras(case_dir, value), fmt)
        image, label = str(case_dir / "image.nii.gz"), str(case_dir / "label.nii.gz")
        if name == "ct_totalseg_example_multiorgan":  # an image may be a DICOM series folder
            # Reoriented to LPS (identity direction: what the helper writes); same voxels in physical space.
            oriented = sitk.DICOMOrient(sitk.ReadImage(image), "LPS")
            write_dicom_series(oriented, root / "dicom_ct", "1.2.826.0.1.3680043.2.1125.7")
            image, label = str(root / "dicom_ct"), str(root / "ct_label_lps.nii.gz")
            sitk.WriteImage(sitk.DICOMOrient(sitk.ReadImage(str(case_dir / "label.nii.gz")), "LPS"), label)
        rows.append({"image": image, "prompts": prompts.name, "label": label,
                     "label_value": value, "name": name})
    return root, rows


def make_manifest(root: Path, rows, out_dir: str, name: str = "manifest.csv") -> Path:
    cases = [BatchCase(r["image"], str(root / r["prompts"]), str(root / out_dir / f"{r['name']}.nii.gz"),
                       r["label"], r["label_value"]) for r in rows]
    return write_manifest(cases, root / name)


def read_masks(folder: Path):
    return {p.name: sitk.ReadImage(str(p)) for p in sorted(folder.glob("*.nii.gz"))}


def assert_same_masks(a, b):
    assert sorted(a) == sorted(b)
    for name in a:
        np.testing.assert_array_equal(sitk.GetArrayFromImage(a[name]), sitk.GetArrayFromImage(b[name]), err_msg=name)
        np.testing.assert_allclose(a[name].GetOrigin(), b[name].GetOrigin())
        np.testing.assert_allclose(a[name].GetDirection(), b[name].GetDirection())


# ---------------------------------------------------------------- identical masks in every mode
def test_serial_two_processes_and_dask_cluster_give_identical_masks(cohort, model_path, capsys):
    distributed = pytest.importorskip("distributed")
    root, rows = cohort
    serial = list(segment_cases(make_manifest(root, rows, "serial", "serial.csv"), str(model_path), threads=1))
    assert [r.status for r in serial] == ["done"] * len(rows), [r.error for r in serial]
    assert sum(r.model_load_s > 0 for r in serial) <= 1  # this process: loaded once (or already cached)
    for result in serial:  # real cases give real masks: the comparison below is not between empty volumes
        assert result.voxels > 0 and result.dice is not None
        assert set(result.timings) >= {"read_s", "resample_s", "encode_s", "decode_s", "paste_s", "write_s"}

    processes = list(segment_cases(make_manifest(root, rows, "processes", "processes.csv"), str(model_path),
                                   workers=2, threads=1))
    assert [r.status for r in processes] == ["done"] * len(rows)
    workers = {r.worker for r in processes}
    assert len(workers) <= 2 and str(os.getpid()) not in " ".join(workers)
    assert sum(r.model_load_s > 0 for r in processes) == len(workers)  # once per worker, never per case
    assert_same_masks(read_masks(root / "serial"), read_masks(root / "processes"))

    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        manifest = make_manifest(root, rows, "dask", "dask.csv")
        code = main(["batch", str(manifest), "--model", str(model_path), "--scheduler", cluster.scheduler_address,
                     "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    report = json.loads((root / "dask.report.json").read_text())
    assert report["summary"]["done"] == len(rows) and report["summary"]["failed"] == 0
    loads = [c for c in report["cases"] if c["model_load_s"] > 0]
    assert 1 <= len(loads) == len({c["worker"] for c in report["cases"]}) <= 2
    assert out.strip().splitlines()[-1].startswith(f"batch: {len(rows)} cases: {len(rows)} done")
    assert_same_masks(read_masks(root / "serial"), read_masks(root / "dask"))
    np.testing.assert_allclose([c["dice"] for c in report["cases"]], [r.dice for r in
                               sorted(serial, key=lambda r: r.row)])


def test_segment_api_and_cli_segment_give_the_batch_mask(cohort, model_path, tmp_path, capsys):
    root, rows = cohort
    row = rows[1]
    case = BatchCase(row["image"], str(root / row["prompts"]), str(tmp_path / "batch.nii.gz"))
    [result] = segment_cases([case], str(model_path), threads=1)
    batch_mask = sitk.ReadImage(case.output)

    prompts = json.loads((root / row["prompts"]).read_text())["points"]
    image = sitk.ReadImage(row["image"])
    api_mask = segment(image, [p["ras"] for p in prompts], [True], model=str(model_path))
    assert api_mask.GetSize() == image.GetSize() and api_mask.GetSpacing() == image.GetSpacing()
    np.testing.assert_array_equal(sitk.GetArrayFromImage(api_mask), sitk.GetArrayFromImage(batch_mask))
    # A (k, j, i) array with its IJK→RAS matrix (what Slicer's console has) gives the array back.
    geometry = VolumeGeometry.from_sitk(image)
    array_mask = segment(sitk.GetArrayFromImage(image), [p["ras"] for p in prompts], [True], model=str(model_path),
                         ijk_to_ras=geometry.ijk_to_ras)
    np.testing.assert_array_equal(array_mask, sitk.GetArrayFromImage(batch_mask))

    assert main(["segment", row["image"], "--points", case.prompts, "--output", str(tmp_path / "cli.nii.gz"),
                 "--model", str(model_path)]) == 0
    assert "+ click" in capsys.readouterr().out
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "cli.nii.gz"))),
                                  sitk.GetArrayFromImage(batch_mask))
    with pytest.raises(InvalidPromptError, match="one sign per point"):
        segment(image, [p["ras"] for p in prompts], [True, False], model=str(model_path))
    with pytest.raises(InvalidPromptError, match="only negative"):
        segment(image, [p["ras"] for p in prompts], [False], model=str(model_path))


# ---------------------------------------------------------------- failures, resume
def test_bad_cases_never_stop_the_others_and_a_rerun_finishes_them(cohort, model_path, tmp_path, capsys):
    root, rows = cohort
    good = rows[1:3]
    bad_prompts = tmp_path / "bad.json"
    bad_prompts.write_text("{not json")
    cases = [
        BatchCase(good[0]["image"], str(root / good[0]["prompts"]), str(tmp_path / "out" / "a.nii.gz")),
        BatchCase(good[1]["image"], str(bad_prompts), str(tmp_path / "out" / "b.nii.gz")),
        BatchCase(str(tmp_path / "missing.nii.gz"), str(root / good[0]["prompts"]), str(tmp_path / "out" / "c.nii.gz")),
        BatchCase(good[1]["image"], str(root / good[1]["prompts"]), str(tmp_path / "out" / "d.nii.gz")),
    ]
    manifest = write_manifest(cases, tmp_path / "m.csv")
    code = main(["batch", str(manifest), "--model", str(model_path), "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 1
    failures = [line for line in out.splitlines() if " failed: " in line]
    assert len(failures) == 2
    assert "row 3 (b.nii.gz)" in failures[0] and "not valid JSON" in failures[0]
    assert "row 4 (c.nii.gz)" in failures[1] and "missing.nii.gz not found" in failures[1]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["a.nii.gz", "d.nii.gz"]  # no temp files
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [c["status"] for c in report["cases"]] == ["done", "failed", "failed", "done"]
    assert report["cases"][1]["error_type"] == "InvalidPromptError" and report["cases"][0]["seconds"] > 0
    assert out.strip().splitlines()[-1].startswith("batch: 4 cases: 2 done, 0 skipped (already written), 2 failed")

    written = {name: (tmp_path / "out" / name).stat().st_mtime_ns for name in ("a.nii.gz", "d.nii.gz")}
    shutil.copyfile(root / good[1]["prompts"], bad_prompts)  # the user fixes the prompt file
    summary = run_batch(manifest, model=str(model_path), threads=1)
    assert (summary["done"], summary["skipped"], summary["failed"]) == (1, 2, 1)  # c's image is still missing
    assert {n: (tmp_path / "out" / n).stat().st_mtime_ns for n in written} == written  # skipped, not redone
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [c["status"] for c in report["cases"]] == ["skipped", "done", "failed", "skipped"]
    assert report["cases"][0]["seconds"] > 0  # the earlier run's entry is kept for a skipped case


def _batch_process(manifest: Path, model_path: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "SAMVolSegmentLib.cli.main", "batch", str(manifest), "--model",
                             str(model_path), "--threads", "1", *extra], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _finished_outputs(folder: Path) -> list[Path]:
    """Outputs under their final names (atomic writes keep hidden ``.NAME.XXXX.tmp.nii.gz`` files until done)."""
    return sorted(p for p in folder.glob("*.nii.gz") if not p.name.startswith("."))


def _wait_for_outputs(folder: Path, count: int, process: subprocess.Popen, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while len(_finished_outputs(folder)) < count:
        assert process.poll() is None, process.stdout.read()
        assert time.monotonic() < deadline, "no outputs appeared"
        time.sleep(0.05)


def _repeated_cases(cohort, tmp_path: Path, count: int) -> Path:
    root, rows = cohort
    row = rows[1]  # the spinal cord: small, so many cases run quickly
    cases = [BatchCase(row["image"], str(root / row["prompts"]), str(tmp_path / "out" / f"case{n:02d}.nii.gz"))
             for n in range(count)]
    return write_manifest(cases, tmp_path / "m.csv")


def test_a_killed_batch_loses_nothing_and_a_rerun_finishes_the_rest(cohort, model_path, tmp_path):
    manifest = _repeated_cases(cohort, tmp_path, 8)
    process = _batch_process(manifest, model_path)
    try:
        _wait_for_outputs(tmp_path / "out", 2, process)
    finally:
        os.killpg(process.pid, signal.SIGKILL)  # the whole batch dies at once, mid-case
        process.wait()
    written = _finished_outputs(tmp_path / "out")
    assert 2 <= len(written) < 8
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(written[0])))
    for path in written:  # every output under its final name is complete
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), reference)
    mtimes = {p.name: p.stat().st_mtime_ns for p in written}
    summary = run_batch(manifest, model=str(model_path), threads=1)
    assert summary["skipped"] == len(written) and summary["done"] == 8 - len(written) and summary["failed"] == 0
    assert {p.name: p.stat().st_mtime_ns for p in written} == mtimes
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"case{n:02d}.nii.gz" for n in range(8)]
    for path in (tmp_path / "out").glob("*.nii.gz"):
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(path))), reference)


def test_a_killed_worker_process_is_replaced_and_the_batch_finishes(cohort, model_path, tmp_path):
    psutil = pytest.importorskip("psutil")
    manifest = _repeated_cases(cohort, tmp_path, 8)
    process = _batch_process(manifest, model_path, "--workers", "2")
    try:
        _wait_for_outputs(tmp_path / "out", 1, process)
        workers = [p for p in psutil.Process(process.pid).children(recursive=True)
                   if "spawn_main" in " ".join(p.cmdline())]
        assert workers
        workers[0].kill()
        out, _ = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0, out
    # The killed worker's case is redone (stderr is merged in: a multiprocessing warning may follow the summary).
    assert any(line.startswith("batch: 8 cases: 8 done") for line in out.splitlines()), out
    report = json.loads((tmp_path / "m.report.json").read_text())
    assert [c["status"] for c in report["cases"]] == ["done"] * 8
    masks = [sitk.GetArrayFromImage(sitk.ReadImage(str(p))) for p in sorted((tmp_path / "out").glob("*.nii.gz"))]
    assert len(masks) == 8 and all(np.array_equal(m, masks[0]) for m in masks)


# ---------------------------------------------------------------- bad manifests: one line each
@pytest.mark.parametrize(
    "text, message",
    [
        (None, "not found"),
        ("", "lacks the column(s) image, prompts, output"),
        ("image,output\na.nii.gz,b.nii.gz\n", "lacks the column(s) prompts"),
        ("image,prompts,output\n", "has no cases"),
        ("image,prompts,output\na.nii.gz,,b.nii.gz\n", "row 2: empty prompts"),
        ("image,prompts,output\na.nii.gz,p.csv,b.png\n", "row 2: output b.png needs one of the extensions"),
        ("image,prompts,output\na.nii.gz,p.csv,b.nii.gz\nc.nii.gz,q.csv,b.nii.gz\n", "rows 2 and 3 both write"),
        ("image,prompts,output,label,label_value\na.nii.gz,p.csv,b.nii.gz,l.nii.gz,liver\n", "is not an integer"),
        ("image,prompts,output,label_value\na.nii.gz,p.csv,b.nii.gz,3\n", "label_value without a label"),
    ],
)
def test_a_bad_manifest_is_one_line_and_runs_nothing(tmp_path, capsys, text, message):
    manifest = tmp_path / "m.csv"
    if text is not None:
        manifest.write_text(text)
    code = main(["batch", str(manifest), "--model", "no-such-model.pt"])
    captured = capsys.readouterr()
    assert code == 2 and message in captured.err and len(captured.err.strip().splitlines()) == 1
    assert "no-such-model" not in captured.err  # refused before any model or worker
    if text is not None:
        with pytest.raises(ManifestError):
            read_manifest(manifest)


def test_manifest_paths_are_relative_to_its_folder_and_comments_are_skipped(tmp_path):
    (tmp_path / "sub").mkdir()
    manifest = tmp_path / "sub" / "m.csv"
    manifest.write_text("# cohort A\nImage,Prompts,Output,Label,Label_Value\nimg.nii.gz,p.csv,out/a.nrrd,l.nii.gz,\n"
                        "/abs/img.nii.gz,p.csv,b.nii.gz,l.nii.gz,7\n")
    first, second = read_manifest(manifest)
    assert first.image == str(tmp_path / "sub" / "img.nii.gz") and first.output == str(tmp_path / "sub/out/a.nrrd")
    assert first.label_value is None and first.row == 3
    assert second.image == "/abs/img.nii.gz" and second.label_value == 7


def test_an_unloadable_model_stops_the_batch_with_one_line(cohort, tmp_path, capsys):
    root, rows = cohort
    manifest = make_manifest(root, rows[1:2], str(tmp_path / "out"), str(tmp_path / "m.csv"))
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    code = main(["batch", str(manifest), "--model", str(broken)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "broken.pt" in err
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())


# ---------------------------------------------------------------- benchmark
def test_throughput_benchmark_writes_json_and_markdown(shared_data_dir, tmp_path):
    sys.path.insert(0, str(REPO / "benchmarks"))
    try:
        import batch_throughput
    finally:
        sys.path.remove(str(REPO / "benchmarks"))
    assert batch_throughput.main(["--cases", "mr_sct_t2_spinalcord", "--repeat", "3", "--threads", "2",
                                  "--modes", "serial,processes", "--note", "test run", "--out", str(tmp_path)]) == 0
    report = json.loads((tmp_path / "batch_throughput.json").read_text())
    serial, processes = report["modes"]
    assert serial["done"] == processes["done"] == 3 and not serial["failed"] and not processes["failed"]
    assert (serial["threads_per_process"], processes["threads_per_process"]) == (2, 1)
    assert serial["model_loads"] == 1 and 1 <= processes["model_loads"] == processes["workers_seen"] <= 2
    assert serial["cases_per_minute"] > 0 and serial["stage_mean_s"]["encode_s"] > 0
    assert report["mask_differences_vs_serial"]["processes"]["mask_voxels"] > 0
    markdown = (tmp_path / "batch_throughput.md").read_text(encoding="utf-8")
    assert "**test run**" in markdown and "| processes | 2 × 1 |" in markdown


def test_a_manifest_output_that_is_an_input_is_refused_and_the_input_kept(tmp_path):
    """Issue 14 bug 1 for batch rows: the output may not be the row's image or prompt file (resolved paths)."""
    from SAMVolSegmentLib.batch import check_output_path
    from SAMVolSegmentLib.errors import OutputPathError

    image = tmp_path / "ct.nii.gz"
    image.write_bytes(b"not really an image")
    prompts = tmp_path / "p.json"
    prompts.write_text("{}")
    for output in (image, tmp_path / "sub" / ".." / "ct.nii.gz"):
        with pytest.raises(OutputPathError):
            check_output_path(BatchCase(str(image), str(prompts), str(output)))
    with pytest.raises(OutputPathError, match="lower case"):
        check_output_path(BatchCase(str(image), str(prompts), str(tmp_path / "mask.NII.GZ")))
    assert image.read_bytes() == b"not really an image"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_worker_started_by_a_dask_nanny_gets_glibc_thresholds_back():
    """Dask's nanny exports MALLOC_TRIM_THRESHOLD_=65536, which doubled the encoder's time in its workers; a
    worker undoes it once (mallopt), and a process without the variable is left alone."""
    code = ("from SAMVolSegmentLib.batch import relax_malloc_trimming as r; "
            "print(r(), r())")
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    plain = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    nanny = subprocess.run([sys.executable, "-c", code], env={**env, "MALLOC_TRIM_THRESHOLD_": "65536"},
                           capture_output=True, text=True, check=True)
    assert plain.stdout.split() == ["False", "False"]
    assert nanny.stdout.split() == ["True", "True"]


# ---------------------------------------------------------------- Dask settings (benchmarks/batch_throughput.py)
def _worker_state(dask_worker=None):
    """On a Dask worker: whether its profiler runs, and the glibc variable its nanny exported."""
    running = [dask_worker.periodic_callbacks[name].is_running() for name in ("profile", "profile-cycle")
               if name in dask_worker.periodic_callbacks]
    return {"profiling": any(running), "malloc_trim": os.environ.get("MALLOC_TRIM_THRESHOLD_")}


def test_local_cluster_workers_run_without_profiler_and_leave_this_process_alone():
    distributed = pytest.importorskip("distributed")
    from SAMVolSegmentLib.batch import local_cluster

    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}  # as a fresh process has it
    os.environ.pop("MALLOC_TRIM_THRESHOLD_", None)  # (an earlier test's default cluster may have left it)
    with local_cluster(1) as cluster, distributed.Client(cluster) as client:
        # Dask's malloc variable stays: the worker's relax_malloc_trimming then sets the thresholds it measured best.
        assert list(client.run(_worker_state).values()) == [{"profiling": False, "malloc_trim": "65536"}]
    assert dict(os.environ) == environ  # the nannies' pre-spawn environment did not stay in this process


def test_a_dask_batch_pauses_the_profiler_of_a_default_cluster_and_restarts_it():
    distributed = pytest.importorskip("distributed")
    from SAMVolSegmentLib.batch import _profiler_paused

    environ = dict(os.environ)
    try:
        with distributed.LocalCluster(n_workers=1, threads_per_worker=1, dashboard_address=None) as cluster, \
                distributed.Client(cluster) as client:
            assert [s["profiling"] for s in client.run(_worker_state).values()] == [True]
            with _profiler_paused(client):
                assert [s["profiling"] for s in client.run(_worker_state).values()] == [False]
            assert [s["profiling"] for s in client.run(_worker_state).values()] == [True]
    finally:
        os.environ.clear()
        os.environ.update(environ)
