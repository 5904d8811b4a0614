#!/usr/bin/env bash
# Create ./.venv with splatseg and everything it needs, the optional Ray extra included (idempotent; re-run after
# pulling).
# On a machine without an NVIDIA GPU it pins the CPU build of torch (ci/constraints-cpu.txt)
# and installs the torchvision CPU fix; a GPU machine gets neither.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${SPLATSEG_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

command -v uv >/dev/null 2>&1 || "$PYTHON" -m pip install -q uv
# open3d (nerfstudio reads seed point clouds with it) needs libusb on Debian/Ubuntu.
if ! ldconfig -p 2>/dev/null | grep -q libusb-1.0.so.0; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q libusb-1.0-0 >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q libusb-1.0-0 >/dev/null; })
  else
    echo "warning: libusb-1.0 is missing; install it (sudo apt-get install libusb-1.0-0) for seed point clouds" >&2
  fi
fi
# The web viewer's browser test drives Debian's chromium through playwright (never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get install -y -q chromium fonts-liberation >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium fonts-liberation >/dev/null; }) \
      || echo "warning: could not install chromium; tests/test_viewer_browser.py will be skipped" >&2
  else
    echo "warning: /usr/bin/chromium is missing (sudo apt-get install chromium); the browser test will be skipped" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || uv venv -q "$VENV" --python "$PYTHON"
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  uv pip install -q --python "$VENV/bin/python" -e ".[dev,ray]"
else
  extra=()
  [ -d /opt/wheels ] && extra+=(--find-links /opt/wheels)  # the local CPU torch wheel on the build machines
  uv pip install -q --python "$VENV/bin/python" -c ci/constraints-cpu.txt "${extra[@]}" -e ".[dev,ray]"
  site=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
  echo "import splatseg_ns._torchvision_cpu as _m; _m.install()" > "$site/splatseg_torchvision_cpu.pth"
fi
echo "splatseg is installed in $VENV (activate with: source $VENV/bin/activate)"
