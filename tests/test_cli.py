"""Every `splatseg` subcommand on malformed input: exit status non-zero, one line naming the file or option,
no traceback, nothing that existed before damaged. Table-driven, plus generated damage (truncated files,
a wrong type in every field, random bytes) of the files a person may edit: selection files, prompts.json."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np
import pytest

from splatseg_ns import cli
from tests.helpers import VIEW


def run_cli(args: List[str]) -> tuple:
    """(exit status, what it printed) of `splatseg ARGS` run in this process. Any exception other than the
    command's own exit is a traceback a user would see: it fails the test."""
    out = io.StringIO()
    argv = sys.argv
    sys.argv = ["splatseg", *args]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            cli.entrypoint()
    except SystemExit as exit_:
        code = exit_.code
        if isinstance(code, str):  # SystemExit("error: ...") prints it and exits with 1
            out.write(code + "\n")
            code = 1
    finally:
        sys.argv = argv
    return code or 0, out.getvalue()


def snapshot(paths: List[Path]) -> Dict[str, Optional[bytes]]:
    """The bytes of every file at or below `paths` (None for a missing path)."""
    state: Dict[str, Optional[bytes]] = {}
    for path in paths:
        if path.is_dir():
            for child in sorted(path.rglob("*")):
                state[str(child)] = child.read_bytes() if child.is_file() else b"<dir>"
            state[str(path)] = b"<dir>"
        else:
            state[str(path)] = path.read_bytes() if path.exists() else None
    return state


@pytest.fixture(scope="module")
def world(trained_demo_run: Path, demo_scene: Path, tmp_path_factory) -> Dict[str, Path]:
    """A trained run, a good selection and benchmark of it, and the things a user may pass by mistake."""
    from splatseg_ns.tools.make_benchmark import deepest_pixel, object_masks

    root = tmp_path_factory.mktemp("cli")
    largest = max(object_masks(demo_scene, demo_scene / "images" / VIEW, "coarse").values(), key=lambda m: m.sum())
    x, y = deepest_pixel(largest)
    code, said = run_cli(["select", "--load-config", str(trained_demo_run), "--view", VIEW, "--click", str(x), str(y),
                          "--output", str(root / "good.json")])
    assert code == 0, said
    (root / "a_folder").mkdir()
    (root / "a_folder" / "keep.txt").write_text("keep me")
    (root / "a_file").write_text("not a folder")
    (root / "corrupt.yml").write_text("pipeline: [unclosed\n  - {")
    (root / "other.yml").write_text("just: a mapping\n")
    (root / "no_images").mkdir()
    code, said = run_cli(["make-benchmark", "--data", str(demo_scene), "--output", str(root / "bench"),
                          "--prompt-view", VIEW, "--score-views", "frame_00006"])
    assert code == 0, said
    good = json.loads((root / "good.json").read_text())
    every = dict(good, indices=list(range(int(good["fingerprint"].split(":")[0]))))
    (root / "every.json").write_text(json.dumps(every))
    (root / "other_run.json").write_text(json.dumps(dict(good, run="/elsewhere/config.yml",
                                                          fingerprint=f"{len(every['indices'])}:0123456789abcdef")))
    (root / "changed.json").write_text(json.dumps(dict(good, fingerprint=f"{len(every['indices'])}:0123456789abcdef")))
    return {"config": trained_demo_run, "data": demo_scene, "root": root, "x": x, "y": y}


def write_json(path: Path, value) -> Path:
    path.write_text(json.dumps(value))
    return path


def selection_with(world, **fields) -> Path:
    good = json.loads((world["root"] / "good.json").read_text())
    name = "sel_" + "_".join(sorted(fields)) + ".json"
    return write_json(world["root"] / name, {**good, **fields})


def bench_with(world, prompts) -> Path:
    folder = world["root"] / f"bench_{abs(hash(json.dumps(prompts, default=str))) % 10**8}"
    folder.mkdir(exist_ok=True)
    (folder / "prompts.json").write_text(prompts if isinstance(prompts, str) else json.dumps(prompts))
    return folder


# (name, arguments given the world, words the message must hold, paths that must stay as they were)
Case = tuple
CASES: List[Case] = [
    # select
    ("select into a folder", lambda w: ["select", "--load-config", w["config"], "--view", VIEW, "--click", w["x"], w["y"],
                                        "--output", w["root"] / "a_folder"], ["--output", "a_folder", "is a folder"],
     ["a_folder"]),
    ("select threshold above 1", lambda w: ["select", "--load-config", w["config"], "--view", VIEW, "--click", w["x"], w["y"],
                                            "--threshold", "2", "--output", w["root"] / "t.json"],
     ["--threshold 2.0", "[-1, 1]"], []),
    ("select text and clicks", lambda w: ["select", "--load-config", w["config"], "--text", "mushroom", "--view", VIEW,
                                          "--click", w["x"], w["y"], "--output", w["root"] / "t.json"],
     ["one kind of prompt"], []),
    ("select no prompt", lambda w: ["select", "--load-config", w["config"], "--output", w["root"] / "t.json"],
     ["--view NAME", "--click"], []),
    ("select view without click", lambda w: ["select", "--load-config", w["config"], "--view", VIEW,
                                             "--output", w["root"] / "t.json"], ["--click"], []),
    ("select empty text", lambda w: ["select", "--load-config", w["config"], "--text", " ", "--output", w["root"] / "t.json"],
     ["--text is empty"], []),
    ("select missing config", lambda w: ["select", "--load-config", w["root"] / "nowhere.yml", "--view", VIEW, "--click",
                                         "1", "1", "--output", w["root"] / "t.json"], ["--load-config", "nowhere.yml"], []),
    ("select corrupt config", lambda w: ["select", "--load-config", w["root"] / "corrupt.yml", "--view", VIEW, "--click",
                                         "1", "1", "--output", w["root"] / "t.json"], ["corrupt.yml", "damaged"],
     ["corrupt.yml"]),
    ("select config of nothing", lambda w: ["select", "--load-config", w["root"] / "other.yml", "--view", VIEW, "--click",
                                            "1", "1", "--output", w["root"] / "t.json"],
     ["other.yml", "not a nerfstudio run config"], []),
    ("select masks folder missing", lambda w: ["select", "--load-config", w["config"], "--masks", w["root"] / "nomasks",
                                               "--output", w["root"] / "t.json"], ["--masks", "nomasks"], []),
    ("select on background", lambda w: ["select", "--load-config", w["config"], "--view", VIEW, "--click", "0", "0",
                                        "--output", w["root"] / "t.json"], ["empty background", VIEW], []),
    ("select outside the image", lambda w: ["select", "--load-config", w["config"], "--view", VIEW, "--click", "500", "3",
                                            "--output", w["root"] / "t.json"], ["outside view", VIEW], []),
    ("select unknown view", lambda w: ["select", "--load-config", w["config"], "--view", "holiday.png", "--click", "3", "3",
                                       "--output", w["root"] / "t.json"], ["holiday.png"], []),
    ("select by name without CLIP", lambda w: ["select", "--load-config", w["config"], "--text", "mushroom",
                                               "--output", w["root"] / "t.json"], ["no CLIP embeddings"], []),
    # export
    ("export missing selection", lambda w: ["export", "--load-config", w["config"], "--selection", w["root"] / "none.json",
                                            "--output", w["root"] / "o.ply"], ["none.json", "no such selection file"], []),
    ("export selection that is a list", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                   write_json(w["root"] / "list.json", [1, 2]),
                                                   "--output", w["root"] / "o.ply"], ["list.json", "JSON list"], []),
    ("export fingerprint without colon", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                    selection_with(w, fingerprint="12345"), "--output", w["root"] / "o.ply"],
     ["field 'fingerprint'"], []),
    ("export float indices", lambda w: ["export", "--load-config", w["config"], "--selection",
                                        selection_with(w, indices=[1.7, 2.2]), "--output", w["root"] / "o.ply"],
     ["field 'indices'", "whole numbers"], []),
    ("export indices not a list", lambda w: ["export", "--load-config", w["config"], "--selection",
                                             selection_with(w, indices=5), "--output", w["root"] / "o.ply"],
     ["field 'indices'"], []),
    ("export unknown level", lambda w: ["export", "--load-config", w["config"], "--selection",
                                        selection_with(w, level="medium"), "--output", w["root"] / "o.ply"],
     ["field 'level'", "medium"], []),
    ("export indices out of range", lambda w: ["export", "--load-config", w["config"], "--selection",
                                               selection_with(w, indices=[10**9]), "--output", w["root"] / "o.ply"],
     ["field 'indices'", "outside"], []),
    ("export into a folder", lambda w: ["export", "--load-config", w["config"], "--selection", w["root"] / "good.json",
                                        "--output", w["root"] / "a_folder"], ["--output", "is a folder"], ["a_folder"]),
    ("export the scene without everything", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                       w["root"] / "every.json", "--output", w["root"] / "o.ply",
                                                       "--invert"], ["every.json", "selects every Gaussian"], []),
    ("export selection of another run", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                   w["root"] / "other_run.json", "--output", w["root"] / "o.ply"],
     ["other_run.json", "was made on run /elsewhere/config.yml"], []),
    ("export selection of this run before it changed", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                                  w["root"] / "changed.json", "--output",
                                                                  w["root"] / "o.ply"],
     ["changed.json", "was made on this run", "changed"], []),
    ("export segments into a file", lambda w: ["export", "--load-config", w["config"], "--segments", "--output-dir",
                                               w["root"] / "a_file"], ["--output-dir", "is a file, not a folder"],
     ["a_file"]),
    ("export segments and a selection", lambda w: ["export", "--load-config", w["config"], "--segments", "--selection",
                                                   w["root"] / "good.json", "--output-dir", w["root"] / "s"],
     ["give either"], []),
    ("export segments without a folder", lambda w: ["export", "--load-config", w["config"], "--segments"],
     ["--segments needs --output-dir"], []),
    ("export selection without output", lambda w: ["export", "--load-config", w["config"], "--selection",
                                                   w["root"] / "good.json"], ["--selection needs --output"], []),
    # eval
    ("eval into a folder", lambda w: ["eval", "--load-config", w["config"], "--benchmark", w["root"] / "bench",
                                      "--output", w["root"] / "a_folder"], ["--output", "is a folder"], ["a_folder"]),
    ("eval prompts not JSON", lambda w: ["eval", "--load-config", w["config"], "--benchmark", bench_with(w, "{not json"),
                                         "--output", w["root"] / "m.json"], ["prompts.json", "not JSON"], []),
    ("eval no prompts file", lambda w: ["eval", "--load-config", w["config"], "--benchmark", w["root"] / "no_images",
                                        "--output", w["root"] / "m.json"], ["prompts.json", "missing"], []),
    ("eval missing benchmark", lambda w: ["eval", "--load-config", w["config"], "--benchmark", w["root"] / "nobench",
                                          "--output", w["root"] / "m.json"], ["--benchmark", "nobench"], []),
    ("eval bad click field", lambda w: ["eval", "--load-config", w["config"], "--benchmark",
                                        bench_with(w, [{"name": "p", "view": VIEW, "positive": "x"}]),
                                        "--output", w["root"] / "m.json"], ["prompt 'p'", "field 'positive'"], []),
    ("eval prompt on an unknown view", lambda w: ["eval", "--load-config", w["config"], "--benchmark",
                                                  bench_with(w, [{"name": "p", "view": "holiday.png",
                                                                  "positive": [[3, 3]]}]),
                                                  "--output", w["root"] / "m.json"], ["prompt 'p'", "holiday.png"], []),
    # masks
    ("masks on a missing folder", lambda w: ["masks", "--data", w["root"] / "nodata"], ["--data", "nodata"], []),
    ("masks on a file", lambda w: ["masks", "--data", w["root"] / "a_file"], ["--data", "is a file"], ["a_file"]),
    ("masks bad shard", lambda w: ["masks", "--data", w["data"], "--shard", "3/2"], ["--shard '3/2'"], []),
    ("masks on a folder of no images", lambda w: ["masks", "--data", w["root"] / "no_images"], ["no images found"], []),
    # demo-data and make-benchmark
    ("demo-data no views", lambda w: ["demo-data", w["root"] / "d", "--num-views", "0"], ["--num-views 0"], []),
    ("demo-data no pixels", lambda w: ["demo-data", w["root"] / "d", "--resolution", "0"], ["--resolution 0"], []),
    ("demo-data into a file", lambda w: ["demo-data", w["root"] / "a_file"], ["a_file", "is a file"], ["a_file"]),
    ("make-benchmark missing data", lambda w: ["make-benchmark", "--data", w["root"] / "nodata", "--output",
                                               w["root"] / "b", "--prompt-view", VIEW, "--score-views", VIEW],
     ["--data", "nodata"], []),
    ("make-benchmark unknown view", lambda w: ["make-benchmark", "--data", w["data"], "--output", w["root"] / "b",
                                               "--prompt-view", "holiday.png", "--score-views", VIEW],
     ["holiday.png"], []),
    # bench
    ("bench on a missing GPU", lambda w: ["bench", "--device", "cuda", "--sizes", "10"], ["--device cuda", "no CUDA"], []),
    ("bench no Gaussians", lambda w: ["bench", "--sizes", "0"], ["--sizes"], []),
    ("bench no threads", lambda w: ["bench", "--threads", "0", "--sizes", "10"], ["--threads 0"], []),
]


@pytest.mark.parametrize("name,arguments,words,kept", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_in_one_clear_line(world, name, arguments, words, kept):
    if name == "bench on a missing GPU":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU")
    args = [str(a) for a in arguments(world)]
    before = snapshot([world["root"] / k for k in kept] + [world["root"] / "good.json"])
    code, said = run_cli(args)
    assert code != 0, said
    assert "Traceback" not in said
    assert any(line.startswith("error: ") for line in said.splitlines()), said
    for word in words:
        assert word in said, f"{word!r} not in {said!r}"
    assert snapshot([world["root"] / k for k in kept] + [world["root"] / "good.json"]) == before


def test_segments_export_replaces_its_own_earlier_files_and_leaves_others(world):
    folder = world["root"] / "segments"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    (folder / "segment_1_notes.ply").write_bytes(b"the user's")  # named like a segment, in no manifest
    (folder / "segment_07_backup.ply").write_bytes(b"the user's too")
    code, said = run_cli(["export", "--load-config", str(world["config"]), "--segments", "--output-dir", str(folder)])
    assert code == 0 and "replacing" not in said, said
    manifest = json.loads((folder / "segments.json").read_text())
    written = sorted(manifest["files"])
    assert "segments_coloured.ply" in written and all((folder / name).exists() for name in written)
    manifest["files"].append("segment_999.ply")  # as if an earlier export had written one more segment
    (folder / "segment_999.ply").write_bytes(b"from an earlier export of more segments")
    (folder / "segments.json").write_text(json.dumps(manifest))
    code, said = run_cli(["export", "--load-config", str(world["config"]), "--segments", "--output-dir", str(folder)])
    assert code == 0 and f"replacing the {len(written) + 1} files" in said, said
    assert not (folder / "segment_999.ply").exists() and (folder / "notes.txt").read_text() == "mine"
    assert (folder / "segment_1_notes.ply").read_bytes() == b"the user's"
    assert (folder / "segment_07_backup.ply").read_bytes() == b"the user's too"
    assert sorted(json.loads((folder / "segments.json").read_text())["files"]) == written


def test_written_files_have_the_usual_modes(world):
    umask = os.umask(0)
    os.umask(umask)
    assert (world["root"] / "good.json").stat().st_mode & 0o777 == 0o666 & ~umask


def damaged_versions(good: bytes, fields: Dict, seed: int) -> List[tuple]:
    """(label, bytes): truncations, each field given each wrong type, random bytes."""
    rng = np.random.default_rng(seed)
    versions = [(f"truncated at {n}", good[:n]) for n in sorted(set(rng.integers(0, len(good), 6).tolist()))]
    for key in fields:
        for wrong in (None, True, 7, -1.5, "x", [], {}, [[1]]):
            if wrong == fields[key] or type(wrong) is type(fields[key]) and key in ("prompts", "run"):
                continue
            versions.append((f"{key}={wrong!r}", json.dumps({**fields, key: wrong}).encode()))
    versions += [(f"random bytes {k}", rng.integers(0, 256, 64, dtype=np.uint8).tobytes()) for k in range(3)]
    return versions


def test_damaged_selection_files_are_refused_by_name(world):
    good_path = world["root"] / "good.json"
    fields = json.loads(good_path.read_text())
    for label, data in damaged_versions(good_path.read_bytes(), fields, seed=0):
        path = world["root"] / "damaged.json"
        path.write_bytes(data)
        code, said = run_cli(["export", "--load-config", str(world["config"]), "--selection", str(path),
                              "--output", str(world["root"] / "d.ply")])
        assert "Traceback" not in said, label
        if code == 0:  # still a valid selection of this run (a prompts field, say)
            continue
        assert str(path) in said and any(line.startswith("error: ") for line in said.splitlines()), (label, said)


def test_damaged_prompts_files_are_refused_by_name(world):
    good_path = world["root"] / "bench" / "prompts.json"
    prompt = json.loads(good_path.read_text())[0]
    damaged = world["root"] / "damaged_bench"
    damaged.mkdir()
    for label, data in damaged_versions(good_path.read_bytes(), prompt, seed=1):
        if label.startswith(("name", "positive", "negative", "view", "level", "entity")):  # one prompt's field
            data = json.dumps([json.loads(data)]).encode()
        (damaged / "prompts.json").write_bytes(data)
        code, said = run_cli(["eval", "--load-config", str(world["config"]), "--benchmark", str(damaged),
                              "--output", str(world["root"] / "m.json")])
        assert "Traceback" not in said, label
        if code == 0:  # a field eval does not read (entity), or a still-valid value
            continue
        assert "prompts.json" in said and any(line.startswith("error: ") for line in said.splitlines()), (label, said)


def test_a_real_process_prints_one_line_and_exits_1(world):
    """What a shell sees: status 1 and the error on stderr, without a traceback."""
    executable = Path(sys.executable).parent / "splatseg"
    result = subprocess.run([str(executable), "select", "--load-config", str(world["config"]), "--view", VIEW,
                             "--click", str(world["x"]), str(world["y"]), "--threshold", "2", "--output", str(world["root"] / "t.json")],
                            capture_output=True, text=True, env=dict(os.environ, TORCHDYNAMO_DISABLE="1"))
    assert result.returncode == 1
    assert result.stderr.strip() == "error: --threshold 2.0: must lie in [-1, 1] (a cosine or a share of rendered weight)."
    assert "Traceback" not in result.stderr + result.stdout

