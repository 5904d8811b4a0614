"""The GPU kit's CPU-checkable parts: the wheelhouse resolves for cp312, gpu_check's stages (ok, failed, timeout,
skipped without CUDA) and the JSON it writes."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_without_cuda_every_stage_is_skipped_and_the_json_written(tmp_path):
    output = tmp_path / "out" / "gpu_check.json"
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--output", str(output), "--work",
                             str(tmp_path / "work"), "--limit", "tabletop=5"],
                            env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    report = json.loads(output.read_text())
    assert report["schema"] == 1 and report["device"] is None and report["total_seconds"] >= 0
    assert list(report["stages"]) == ["install", "gsplat_build", "parity", "tabletop", "bench"]
    for name, stage in report["stages"].items():
        assert stage["status"] == "skipped" and stage["reason"] == "no CUDA device", name
    assert report["stages"]["tabletop"]["limit_s"] == 5
    assert sum(stage.limit_s for stage in _gpu_check().STAGES) <= 540  # the whole script ends within 9 minutes


def test_a_bad_limit_is_refused(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--limit", "train=5"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "STAGE one of install, gsplat_build" in result.stderr


def test_a_stage_that_fails_or_runs_out_of_time_is_recorded(tmp_path):
    gpu_check = _gpu_check()
    context = gpu_check.Context(python=sys.executable, work=tmp_path, wheels=tmp_path / "none")
    ok = gpu_check.Stage("ok", 30, lambda c: [c.python, "-c", f"open({str(tmp_path / 'n.json')!r}, 'w').write('7')"],
                         numbers=lambda c: {"n": gpu_check._read_json(c.work / "n.json")})
    assert gpu_check.run_stage(ok, context) == {"limit_s": 30, "status": "ok", "numbers": {"n": 7},
                                                "seconds": pytest.approx(0, abs=30)}
    failed = gpu_check.run_stage(gpu_check.Stage("bad", 30, lambda c: [c.python, "-c", "raise SystemExit('broke')"]),
                                 context)
    assert failed["status"] == "failed" and failed["reason"] == "exit status 1" and "broke" in failed["log_tail"]
    slow = gpu_check.run_stage(gpu_check.Stage("slow", 1, lambda c: ["bash", "-c", "sleep 30 & sleep 30"]), context)
    assert slow["status"] == "timeout" and slow["seconds"] < 10  # the stage's whole process group is killed
    missing = gpu_check.run_stage(gpu_check.STAGES[0], context)  # install without wheels
    assert missing["status"] == "failed" and "run scripts/gpu_wheelhouse.sh" in missing["reason"]
    assert context.python == sys.executable  # a failed install leaves the interpreter as it was


def test_the_wheelhouse_resolves_for_cp312_within_its_size(tmp_path):
    had_build = (ROOT / "build").exists()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_wheelhouse.sh"), str(tmp_path / "wheels")],
                            capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    count, mib = int(line.split()[0]), int(line.split(": ")[1].split()[0])
    wheels = sorted(p.name for p in (tmp_path / "wheels").glob("*.whl"))
    assert count == len(wheels) >= 20 and mib < 60
    for name in ("nerfstudio-1.1.5", "gsplat-1.4.0", "viser-0.2.7", "segment_anything", "hdbscan", "splatseg"):
        assert any(w.startswith(name) for w in wheels), name
    assert all("cp312" in w or "-none-any" in w or "abi3" in w for w in wheels)
    assert had_build or not (ROOT / "build").exists()  # the project's wheel leaves no build/ in the tree


def test_the_install_stage_builds_a_venv_over_this_interpreters_packages(tmp_path):
    """This interpreter is itself a venv, as the boxes' python3 is: the new venv still imports its torch."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    with zipfile.ZipFile(wheels / "kit_probe-0.1-py3-none-any.whl", "w") as wheel:
        wheel.writestr("kit_probe.py", "WHERE = __file__\n")
        wheel.writestr("kit_probe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: kit-probe\nVersion: 0.1\n")
        wheel.writestr("kit_probe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr("kit_probe-0.1.dist-info/RECORD", "")
    gpu_check = _gpu_check()
    context = gpu_check.Context(python=sys.executable, work=tmp_path / "work", wheels=wheels)
    context.work.mkdir()
    record = gpu_check.run_stage(gpu_check.STAGES[0], context)
    assert record["status"] == "ok", record.get("log_tail")
    assert record["numbers"] == {"wheels": 1} and context.python == str(context.work / "venv" / "bin" / "python")
    where = subprocess.run([context.python, "-c", "import kit_probe, torch; print(kit_probe.WHERE)"],
                           capture_output=True, text=True, check=True).stdout
    assert where.startswith(str(context.work / "venv"))  # the wheel went into the venv, torch came from here
