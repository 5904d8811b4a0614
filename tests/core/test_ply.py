"""3DGS PLY files: ns-export's layout byte for byte, filters, atomic writes and their errors."""

from __future__ import annotations

import errno
import os
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from splatseg_ns.core import files as files_mod
from splatseg_ns.core.io.ply import (
    SH_C0,
    ply_property_names,
    read_gaussians_ply,
    rgb_to_sh,
    segment_colours,
    write_gaussians_ply,
    write_segments_ply,
)


def gaussians(n: int, rest_bases: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        scales=rng.normal(-3, 0.5, size=(n, 3)).astype(np.float32),
        quats=rng.normal(size=(n, 4)).astype(np.float32),
        opacities=rng.normal(0, 2, size=(n, 1)).clip(-5, None).astype(np.float32),
        features_dc=rng.normal(size=(n, 3)).astype(np.float32),
        features_rest=rng.normal(size=(n, rest_bases, 3)).astype(np.float32),
    )


def header_and_body(path: Path):
    data = path.read_bytes()
    end = data.index(b"end_header\n") + len(b"end_header\n")
    return data[:end].decode().splitlines(), data[end:]


def plain_gaussians(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return dict(means=rng.normal(size=(n, 3)), scales=rng.normal(-3, 0.5, size=(n, 3)), quats=rng.normal(size=(n, 4)),
                opacities=np.full((n, 1), 2.0), features_dc=rng.normal(size=(n, 3)), features_rest=None)


def test_property_names_and_order_match_the_exporter():
    # Literally the order ExportGaussianSplat.main builds its OrderedDict in (sh_coeffs mode).
    expected = ["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
    expected += [f"f_rest_{i}" for i in range(45)]
    expected += ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
    assert ply_property_names(15) == expected
    assert ply_property_names(0) == expected[:9] + expected[-8:]


def test_round_trip_values_and_f_rest_order(tmp_path):
    g = gaussians(100)
    path = tmp_path / "obj.ply"
    assert write_gaussians_ply(path, **g) == 100
    lines, body = header_and_body(path)
    assert lines[:2] == ["ply", "format binary_little_endian 1.0"]
    assert "element vertex 100" in lines and "comment Vertical Axis: z" in lines
    assert [line.split()[2] for line in lines if line.startswith("property")] == ply_property_names(15)
    assert all(line.split()[1] == "float" for line in lines if line.startswith("property"))
    assert len(body) == 100 * len(ply_property_names(15)) * 4

    read = read_gaussians_ply(path)
    assert list(read) == ply_property_names(15)
    assert all(v.dtype == np.float32 and v.shape == (100,) for v in read.values())
    np.testing.assert_array_equal(np.stack([read["x"], read["y"], read["z"]], 1), g["means"])
    np.testing.assert_array_equal(np.stack([read[f"rot_{i}"] for i in range(4)], 1), g["quats"])
    np.testing.assert_array_equal(np.stack([read[f"scale_{i}"] for i in range(3)], 1), g["scales"])
    np.testing.assert_array_equal(read["opacity"], g["opacities"][:, 0])
    np.testing.assert_array_equal(read["nx"], np.zeros(100, np.float32))
    # Channel-major: f_rest_{c*K + k} = features_rest[:, k, c] (the Inria order).
    for c in range(3):
        for k in range(15):
            np.testing.assert_array_equal(read[f"f_rest_{c * 15 + k}"], g["features_rest"][:, k, c])


def test_accepts_torch_and_flat_opacities(tmp_path):
    g = {k: torch.from_numpy(v).requires_grad_(k == "means") for k, v in gaussians(10, rest_bases=0).items()}
    g["opacities"] = g["opacities"][:, 0]
    g["features_rest"] = None
    write_gaussians_ply(tmp_path / "t.ply", **g)
    read = read_gaussians_ply(tmp_path / "t.ply")
    assert list(read) == ply_property_names(0)
    np.testing.assert_array_equal(read["opacity"], g["opacities"].numpy())


def test_non_finite_and_transparent_rows_are_dropped(tmp_path):
    g = gaussians(10)
    g["means"][1, 0] = np.nan
    g["scales"][3, 2] = np.inf
    g["features_rest"][5, 7, 1] = -np.inf
    g["opacities"][7, 0] = -6.0  # alpha < 1/255
    assert write_gaussians_ply(tmp_path / "f.ply", **g) == 6
    read = read_gaussians_ply(tmp_path / "f.ply")
    kept = np.array([0, 2, 4, 6, 8, 9])
    np.testing.assert_array_equal(read["x"], g["means"][kept, 0])
    assert write_gaussians_ply(tmp_path / "t.ply", **g, drop_transparent=False) == 7


def test_empty_selection_raises_and_writes_nothing(tmp_path):
    g = gaussians(0)
    with pytest.raises(ValueError, match="empty"):
        write_gaussians_ply(tmp_path / "empty.ply", **g)
    g = gaussians(3)
    g["opacities"][:] = -10.0
    with pytest.raises(ValueError, match="filtered out"):
        write_gaussians_ply(tmp_path / "empty.ply", **g)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_unwritable_destination_names_the_path(tmp_path):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        with pytest.raises(OSError, match=str(folder / "x.ply")):
            write_gaussians_ply(folder / "x.ply", **gaussians(4))
    finally:
        folder.chmod(0o700)
    assert list(folder.iterdir()) == []


def test_destination_errors_name_the_path(tmp_path):
    (tmp_path / "dir.ply").mkdir()
    with pytest.raises(OSError, match="dir.ply"):
        write_gaussians_ply(tmp_path / "dir.ply", **gaussians(4))
    (tmp_path / "file").write_text("x")
    with pytest.raises(OSError, match="file"):
        write_gaussians_ply(tmp_path / "file" / "x.ply", **gaussians(4))


def test_overwrite_is_atomic_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "obj.ply"
    write_gaussians_ply(path, **gaussians(5))
    write_gaussians_ply(path, **gaussians(8, seed=1))
    assert read_gaussians_ply(path)["x"].shape == (8,)
    assert [p.name for p in path.parent.iterdir()] == ["obj.ply"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not the 0600 of a mkstemp file


def test_reader_rejects_bad_files(tmp_path):
    (tmp_path / "a.ply").write_bytes(b"not a ply\n")
    with pytest.raises(ValueError, match="not a PLY"):
        read_gaussians_ply(tmp_path / "a.ply")
    (tmp_path / "b.ply").write_bytes(b"ply\nformat ascii 1.0\nelement vertex 1\nproperty float x\nend_header\n1\n")
    with pytest.raises(ValueError, match="ascii"):
        read_gaussians_ply(tmp_path / "b.ply")
    write_gaussians_ply(tmp_path / "c.ply", **gaussians(4))
    data = (tmp_path / "c.ply").read_bytes()
    (tmp_path / "c.ply").write_bytes(data[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_gaussians_ply(tmp_path / "c.ply")


def test_segment_colours_distinct_and_deterministic():
    labels = np.array([-1, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0])
    rgb = segment_colours(labels)
    assert rgb.shape == (12, 3) and rgb.min() >= 0 and rgb.max() <= 1
    np.testing.assert_array_equal(rgb, segment_colours(torch.from_numpy(labels)))
    np.testing.assert_array_equal(rgb[1], rgb[-1])
    np.testing.assert_array_equal(rgb[0], [0.5, 0.5, 0.5])
    distinct = rgb[1:11]
    gaps = np.linalg.norm(distinct[:, None] - distinct[None], axis=-1) + np.eye(10)
    assert gaps.min() > 0.1


def test_segments_ply_is_coloured_by_label(tmp_path):
    g = gaussians(20)
    labels = np.arange(20) % 4
    write_segments_ply(
        tmp_path / "seg.ply", g["means"], g["scales"], g["quats"], g["opacities"], labels, num_rest_bases=15
    )
    read = read_gaussians_ply(tmp_path / "seg.ply")
    dc = np.stack([read[f"f_dc_{i}"] for i in range(3)], 1)
    np.testing.assert_allclose(dc * SH_C0 + 0.5, segment_colours(labels), atol=1e-6)
    np.testing.assert_allclose(rgb_to_sh(np.array([0.5, 1.0, 0.0])), [0.0, 0.5 / SH_C0, -0.5 / SH_C0])
    assert all(not read[f"f_rest_{i}"].any() for i in range(45))


def test_bytes_equal_nerfstudio_exporter(tmp_path, monkeypatch):
    """Run nerfstudio's own ExportGaussianSplat.main on a stand-in model with the same tensors."""
    from splatseg_ns._torchvision_cpu import install

    install()
    try:
        from nerfstudio.scripts import exporter
    except ImportError as err:  # open3d needs libusb; the layout tests above still run
        pytest.skip(f"nerfstudio's exporter cannot be imported here: {err}")

    from nerfstudio.models.splatfacto import SplatfactoModel

    g = gaussians(40)
    g["scales"][3, 1] = np.nan  # the exporter's per-row finite filter works on [n, 1] arrays
    g["features_rest"][9, 2, 2] = np.inf
    g["opacities"][11, 0] = -7.0  # below logit(1/255)
    model = SplatfactoModel.__new__(SplatfactoModel)
    torch.nn.Module.__init__(model)
    model.config = SimpleNamespace(sh_degree=3)
    model.gauss_params = torch.nn.ParameterDict(
        {
            name: torch.nn.Parameter(torch.from_numpy(g[key]))
            for name, key in [
                ("means", "means"), ("scales", "scales"), ("quats", "quats"), ("opacities", "opacities"),
                ("features_dc", "features_dc"), ("features_rest", "features_rest"),
            ]
        }
    )  # fmt: skip
    monkeypatch.setattr(exporter, "eval_setup", lambda *a, **k: (None, SimpleNamespace(model=model), None, None))
    exporter.ExportGaussianSplat(load_config=Path("unused.yml"), output_dir=tmp_path / "ns").main()

    assert write_gaussians_ply(tmp_path / "ours.ply", **g) == 37
    ns_lines, ns_body = header_and_body(tmp_path / "ns" / "splat.ply")
    our_lines, our_body = header_and_body(tmp_path / "ours.ply")
    assert [line for line in ns_lines if not line.startswith("comment")] == [
        line for line in our_lines if not line.startswith("comment")
    ]
    assert ns_body == our_body


def test_write_speed_at_1m(tmp_path):
    """Timing only (printed): 1M Gaussians with degree-3 SH, and reading them back."""
    n = 1_000_000
    rng = np.random.default_rng(0)
    g = dict(
        means=rng.normal(size=(n, 3)).astype(np.float32),
        scales=np.full((n, 3), -3.0, np.float32),
        quats=np.tile(np.float32([1, 0, 0, 0]), (n, 1)),
        opacities=np.zeros((n, 1), np.float32),
        features_dc=np.zeros((n, 3), np.float32),
        features_rest=np.zeros((n, 15, 3), np.float32),
    )
    t0 = time.perf_counter()
    write_gaussians_ply(tmp_path / "big.ply", **g)
    t1 = time.perf_counter()
    read = read_gaussians_ply(tmp_path / "big.ply")
    t2 = time.perf_counter()
    size_mb = (tmp_path / "big.ply").stat().st_size / 2**20
    print(f"\nPLY 1M Gaussians ({size_mb:.0f} MiB): write {t1 - t0:.2f} s, read {t2 - t1:.2f} s")
    assert read["x"].shape == (n,)


@pytest.mark.parametrize("failure", ["permission", "disk full"])
def test_unwritable_export_names_the_path_and_keeps_the_old_file(tmp_path, monkeypatch, failure):
    output = tmp_path / "exports" / "object.ply"
    write_gaussians_ply(output, **plain_gaussians(5))
    before = output.read_bytes()
    if failure == "permission":  # as a read-only folder does (root, who runs these tests, may write anywhere)
        def refuse(*args, **kwargs):
            raise PermissionError(errno.EACCES, "Permission denied")

        monkeypatch.setattr(files_mod.os, "open", refuse)
    else:
        def disk_full(src, dst):
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr(files_mod.os, "replace", disk_full)
    with pytest.raises(OSError) as err:
        write_gaussians_ply(output, **plain_gaussians(8, seed=1))
    reason = "Permission denied" if failure == "permission" else "No space left on device"
    assert err.value.strerror.startswith(f"Cannot write PLY to {output}: {reason}. Nothing was written")
    assert "a file already there is unchanged" in err.value.strerror
    assert "choose an output path in a folder you can write to" in err.value.strerror
    assert output.read_bytes() == before
    assert [p.name for p in output.parent.iterdir()] == ["object.ply"]


def test_export_to_a_folder_or_under_a_file_names_the_path(tmp_path):
    (tmp_path / "out.ply").mkdir()
    with pytest.raises(IsADirectoryError, match=re.escape(f"{tmp_path / 'out.ply'}: it is a directory. Give a file")):
        write_gaussians_ply(tmp_path / "out.ply", **plain_gaussians(3))
    (tmp_path / "notes").write_text("x")
    with pytest.raises(OSError, match=re.escape(f"Cannot write PLY to {tmp_path / 'notes' / 'x.ply'}")):
        write_gaussians_ply(tmp_path / "notes" / "x.ply", **plain_gaussians(3))
    assert (tmp_path / "notes").read_text() == "x"
