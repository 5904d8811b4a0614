"""Everything a lent GPU box can measure for splatseg in one call, into one JSON (stdlib only).

Run from the repository root on the box (scripts/gpu_check.sh calls it), after scripts/gpu_wheelhouse.sh
filled gpu/wheels/ on a machine with network. Stages, each in its own process with its own time limit; a
stage that fails or runs out of time is recorded and the next one still runs:

  install       a venv over the system's torch (--system-site-packages), the wheels installed offline,
                every module that training, the viewer and the tools import, imported once;
  gsplat_build  gsplat's CUDA kernels compiled (MAX_JOBS = the cores, TORCH_CUDA_ARCH_LIST = this card);
  parity        tests/core/test_gsplat_parity.py: gsplat against the project's rasteriser, the largest
                differences of colours, features, depth, alpha and gradients;
  tabletop      benchmarks/bench_tabletop.py on CUDA (the bench's schedule): mIoU, exports, step times;
  bench         `splatseg bench`'s speed table at 100k / 1M / 3M Gaussians on CUDA.

Without a CUDA device every stage is skipped, with that reason, and the JSON is still written.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import site
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

SCHEMA = 1
ROOT = Path(__file__).resolve().parents[1]
STAGE_STATUSES = ("ok", "failed", "timeout", "skipped")
# What training, the viewer, `splatseg` and its export import (scripts/gpu_wheelhouse.sh brings the rest).
IMPORTS = ["nerfstudio.scripts.train", "nerfstudio.configs.method_configs", "nerfstudio.viewer.viewer",
           "splatseg_ns.method_config", "splatseg_ns.model", "splatseg_ns.datamanager", "splatseg_ns.viewer",
           "splatseg_ns.cli", "splatseg_ns.tools.bench", "segment_anything", "open_clip", "hdbscan", "gsplat",
           "gsplat.strategy", "viser", "tyro"]


@dataclass
class Stage:
    name: str
    limit_s: int
    command: Callable[["Context"], List[str]]
    numbers: Optional[Callable[["Context"], Dict]] = None
    env: Optional[Callable[["Context"], Dict[str, str]]] = None
    on_success: Optional[Callable[["Context"], None]] = None


@dataclass
class Context:
    python: str  # the interpreter the stages run (the venv's once installed)
    work: Path
    wheels: Path


def cuda_device(python: str) -> Optional[Dict]:
    """The card `python`'s torch sees, or None (no torch, no CUDA)."""
    probe = ("import json, torch; d = torch.cuda.is_available(); print(json.dumps(d and {'name': "
             "torch.cuda.get_device_name(0), 'capability': '%d.%d' % torch.cuda.get_device_capability(0), "
             "'torch': torch.__version__, 'cuda': torch.version.cuda}))")
    try:
        result = subprocess.run([python, "-c", probe], capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout.strip().splitlines()[-1]) or None
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError):
        return None


def run_stage(stage: Stage, context: Context) -> Dict:
    """Run one stage in a process group of its own; its status, time, numbers and the end of its log."""
    start = time.perf_counter()
    log = context.work / f"{stage.name}.log"
    env = dict(os.environ, PYTHONUNBUFFERED="1", TORCHDYNAMO_DISABLE="1", **(stage.env(context) if stage.env else {}))
    record: Dict = {"limit_s": stage.limit_s}
    try:
        command = stage.command(context)
        with open(log, "w") as handle:
            process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT,
                                       start_new_session=True)
            try:
                code = process.wait(timeout=stage.limit_s)
                record["status"] = "ok" if code == 0 else "failed"
                if code:
                    record["reason"] = f"exit status {code}"
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
                record.update(status="timeout", reason=f"ran past its {stage.limit_s} s")
        if stage.numbers is not None:
            try:
                record["numbers"] = stage.numbers(context)
            except (OSError, ValueError) as err:
                record["numbers_error"] = str(err)
    except (OSError, ValueError) as err:
        record.update(status="failed", reason=str(err))
    if record["status"] == "ok" and stage.on_success is not None:
        stage.on_success(context)
    record["seconds"] = round(time.perf_counter() - start, 1)
    if log.exists() and record["status"] != "ok":
        record["log_tail"] = log.read_text(errors="replace")[-3000:]
    return record


def _install(context: Context) -> List[str]:
    if not list(context.wheels.glob("*.whl")):
        raise ValueError(f"no wheels in {context.wheels}: run scripts/gpu_wheelhouse.sh on a machine with network "
                         "and carry that folder")
    return [sys.executable, str(Path(__file__).resolve()), "--install-into", str(context.work / "venv"),
            "--wheels", str(context.wheels)]


def install_venv(venv: Path, wheels: Path) -> None:
    """A venv whose own wheels come first and whose other packages are this interpreter's (its torch): a `.pth`
    adds this interpreter's site-packages, since --system-site-packages alone reaches only the base Python's
    when this one is itself a venv (as on the lent boxes). Then every module the tools need is imported."""
    import shutil
    import venv as venv_module

    shutil.rmtree(venv, ignore_errors=True)
    venv_module.create(venv, system_site_packages=True, with_pip=True)
    python = str(venv / "bin" / "python")
    purelib = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()
    # addsitedir, not a bare path: the inherited folders' own .pth files (hooks, editable installs) run too
    Path(purelib, "inherited_site_packages.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in site.getsitepackages()))
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-cache-dir", "--no-compile",
                    *map(str, sorted(wheels.glob("*.whl")))], check=True)
    subprocess.run([python, "-c", f"import importlib; [importlib.import_module(m) for m in {IMPORTS!r}]"], check=True)


def _use_venv(context: Context) -> None:
    context.python = str(context.work / "venv" / "bin" / "python")


def _arch_env(context: Context) -> Dict[str, str]:
    device = cuda_device(context.python) or {}
    return {"MAX_JOBS": str(os.cpu_count() or 4), "TORCH_CUDA_ARCH_LIST": device.get("capability", "")}


def _read_json(path: Path) -> Dict:
    return json.loads(path.read_text())


STAGES = [
    Stage("install", 60, _install, lambda c: {"wheels": len(list(c.wheels.glob("*.whl")))}, on_success=_use_venv),
    Stage("gsplat_build", 270, lambda c: [c.python, "-c", "from gsplat.cuda._backend import _C; assert _C is not None"],
          env=_arch_env),
    Stage("parity", 45, lambda c: [c.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                                   "tests/core/test_gsplat_parity.py"],
          lambda c: _read_json(c.work / "parity.json"),
          env=lambda c: {"SPLATSEG_PARITY_JSON": str(c.work / "parity.json")}),
    Stage("tabletop", 100, lambda c: [c.python, "benchmarks/bench_tabletop.py", "--output-dir",
                                      str(c.work / "bench_tabletop"), "--tag", "cuda"],
          lambda c: _read_json(c.work / "bench_tabletop" / "cuda" / "results.json")),
    Stage("bench", 60, lambda c: [c.python, "-c", "import json, sys; from splatseg_ns.tools.bench import speed_table; "
                                  "json.dump(speed_table([100_000, 1_000_000, 3_000_000], 'cuda'), "
                                  f"open({str(c.work / 'bench.json')!r}, 'w'), default=str)"],
          lambda c: {"rows": _read_json(c.work / "bench.json")}),
]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path(os.environ.get("OUT", "gpu")) / "gpu_check.json")
    parser.add_argument("--work", type=Path, default=Path("/tmp/splatseg_gpu_check"))
    parser.add_argument("--wheels", type=Path, default=ROOT / "gpu" / "wheels")
    parser.add_argument("--python", default=sys.executable, help="the interpreter whose torch has CUDA")
    parser.add_argument("--limit", action="append", default=[], metavar="STAGE=SECONDS",
                        help="another time limit for a stage (repeatable)")
    parser.add_argument("--install-into", type=Path, help=argparse.SUPPRESS)  # the install stage's own process
    args = parser.parse_args(argv)
    if args.install_into:
        install_venv(args.install_into, args.wheels)
        return 0
    stages = {stage.name: stage for stage in STAGES}
    for item in args.limit:
        name, _, seconds = item.partition("=")
        if name not in stages or not seconds.isdecimal():
            parser.error(f"--limit {item}: give STAGE=SECONDS with STAGE one of {', '.join(stages)}")
        stages[name].limit_s = int(seconds)
    args.work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    device = cuda_device(args.python)
    context = Context(python=args.python, work=args.work, wheels=args.wheels)
    report = {"schema": SCHEMA, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "host": platform.node(),
              "python": platform.python_version(), "device": device, "stages": {}}
    for stage in stages.values():
        if device is None:
            report["stages"][stage.name] = {"status": "skipped", "reason": "no CUDA device", "limit_s": stage.limit_s,
                                            "seconds": 0.0}
        else:
            print(f"[{time.strftime('%H:%M:%S')}] {stage.name} (at most {stage.limit_s} s)", flush=True)
            report["stages"][stage.name] = run_stage(stage, context)
            print(f"    {report['stages'][stage.name]['status']} in {report['stages'][stage.name]['seconds']} s",
                  flush=True)
    report["total_seconds"] = round(time.perf_counter() - start, 1)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1, default=str))
    print(f"wrote {args.output}: " + ", ".join(f"{k} {v['status']}" for k, v in report["stages"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
