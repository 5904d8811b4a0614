#!/usr/bin/env bash
# Download into gpu/wheels/ (git-ignored) every wheel a GPU box without network needs to train and
# measure splatseg, for CPython 3.12 on manylinux x86_64, and print the total size (must stay < 60 MiB).
#
# The box is assumed to have (as the lent NVIDIA machines do): Python 3.12, torch 2.11 (+cu130),
# torchvision, numpy, scipy, scikit-image, scikit-learn, opencv-python-headless, timm, matplotlib,
# tensorboard, rich, requests, pyyaml, jaxtyping, huggingface-hub, nvcc 13 and ninja.
# What it brings: exactly the distributions that training, the viewer, `splatseg` and its export import
# (found by importing them and listing sys.modules, scripts/gpu_check.sh's "imports" stage checks the
# same list), at the versions that resolve together on the CPU machines.
# Left out, and why:
#   open3d, pymeshlab, xatlas, nuscenes-devkit, comet-ml, wandb, jupyterlab, av, gdown, pyngrok:
#     nerfstudio requires them but neither training splatfacto, its viewer, nor splatseg's tools import
#     them (open3d only for `ns-export` and seed point clouds: the bench scenes carry none); open3d alone
#     is ~400 MiB.
#   trimesh, yourdfpy, plyfile, nodeenv, pyliblzfse: viser requirements that its server does not import.
#   pydantic, dill: imported only inside try/except by timm and torch.
# Usage: bash scripts/gpu_wheelhouse.sh [DEST]   (then carry gpu/wheels to the box; scripts/gpu_check.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${1:-gpu/wheels}"
PYTHON="${PYTHON:-python3}"
LIMIT_MIB=60

# name==version: the versions this project's CPU environment resolves (ci/constraints-cpu.txt + pyproject),
# except fpsample: 1.0.2 publishes no Linux wheel; 0.3.3 has the bucket_fps_kdline_sampling nerfstudio calls.
WHEELS=(
  nerfstudio==1.1.5 gsplat==1.4.0 nerfacc==0.5.2 viser==0.2.7 msgspec==0.23.0 websockets==17.4
  tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1
  segment-anything==1.0 hdbscan==0.8.44 open-clip-torch==2.32.0 ftfy==6.3.1 wcwidth==0.9.5
  fpsample==0.3.3 pathos==0.3.5 multiprocess==0.70.19 ppft==1.7.8 pox==0.3.7 rawpy==0.28.0
  tensorly==0.10.0 pyquaternion==0.9.9 pytorch-msssim==1.0.0 splines==0.3.0 appdirs==1.4.4
)
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST"
failed=()
for spec in "${WHEELS[@]}"; do
  if ! "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      "${PLATFORMS[@]}" -d "$DEST" "$spec" 2>/dev/null; then
    # Pure-Python projects published as source only: build their (py3-none-any) wheel here.
    if ! "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$DEST" "$spec" >/dev/null 2>&1 \
        && ! "$PYTHON" -m pip wheel -q --no-deps -w "$DEST" "$spec" >/dev/null 2>&1; then
      failed+=("$spec")
    fi
  fi
done
[ -e build ] && had_build=1 || had_build=0
"$PYTHON" -m pip wheel -q --no-deps -w "$DEST" . >/dev/null  # splatseg itself
[ "$had_build" = 1 ] || rm -rf build  # setuptools' build folder, left in the source tree
for wheel in "$DEST"/*.whl; do  # a wheel built here must still install on the box: pure Python or cp312
  case "$(basename "$wheel")" in
    *-py3-none-any.whl|*-py2.py3-none-any.whl|*-py312-none-any.whl|*-cp312-*manylinux*x86_64*.whl|*-abi3-*manylinux*x86_64*.whl) ;;
    *) echo "error: $(basename "$wheel") does not install on cp312 manylinux x86_64" >&2; failed+=("$wheel") ;;
  esac
done
bytes=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
mib=$(( (bytes + 1048575) / 1048576 ))
echo "$(ls "$DEST"/*.whl | wc -l) wheels in $DEST: ${mib} MiB (limit ${LIMIT_MIB} MiB)"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "error: no cp312 manylinux x86_64 wheel for: ${failed[*]}" >&2
  exit 1
fi
if [ "$mib" -ge "$LIMIT_MIB" ]; then
  echo "error: the wheelhouse is ${mib} MiB, over the ${LIMIT_MIB} MiB a device call carries" >&2
  exit 1
fi
