#!/usr/bin/env bash
# Release check: what `pip install supergen` gives must work, not just the editable checkout.
#
#   scripts/release_check.sh [WORKDIR]
#
# 1. builds the sdist, and the wheel from that sdist (`python -m build`'s default), in an isolated
#    build environment: the build requirements in pyproject.toml are what is tested;
# 2. installs the wheel (no extras: what a plain `pip install supergen` gives) into a fresh venv in a
#    folder outside the checkout;
# 3. from that folder, imports every module of the installed packages (a module that needs an
#    optional extra may only fail for want of that extra's package);
# 4. runs the README's quickstart render there and checks the video it wrote.
#
# Wave 2's wheel lacked `supergen.cache` and failed at step 3; every test used the editable install.
# Torch is pinned in the install command for the reason .ci/run gives (an unpinned torch pulls CUDA).
set -euo pipefail
CHECKOUT="$(cd "$(dirname "$0")/.." && pwd)"
WORK="${1:-$(mktemp -d -t supergen-release-XXXXXX)}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"
PY="${PYTHON:-python3}"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false PIP_DISABLE_PIP_VERSION_CHECK=1
mkdir -p "$WORK"
echo "release check in $WORK"

# 1. Build both artefacts; the wheel is built from the sdist, so a file missing from the sdist fails too.
"$PY" -m venv "$WORK/build-env"
"$WORK/build-env/bin/pip" install -q build
"$WORK/build-env/bin/python" -m build -q --outdir "$WORK/dist" "$CHECKOUT" >"$WORK/build.log" 2>&1 \
    || { tail -30 "$WORK/build.log"; echo "release check: the build failed"; exit 1; }
WHEEL=$(ls "$WORK"/dist/supergen-*.whl)
SDIST=$(ls "$WORK"/dist/supergen-*.tar.gz)
echo "built $(basename "$SDIST") and $(basename "$WHEEL")"

# 2. A user's install: the wheel and its declared dependencies, nothing from the checkout.
"$PY" -m venv "$WORK/user-env"
"$WORK/user-env/bin/pip" install -q "$TORCH_SPEC" "$WHEEL"

# 3 and 4 run from a folder that is not the checkout, so nothing can be imported from it by accident.
mkdir -p "$WORK/run"
cd "$WORK/run"
"$WORK/user-env/bin/python" - "$CHECKOUT" <<'EOF'
import importlib, pathlib, pkgutil, sys

checkout = pathlib.Path(sys.argv[1]).resolve()
# The package an optional extra brings, per module that needs it (pyproject.toml's extras).
OPTIONAL = {"supergen_kernels.triton_tile_attention": "triton"}
failed = []
count = 0
for top in ("supergen", "supergen_kernels"):
    package = importlib.import_module(top)
    where = pathlib.Path(package.__file__).resolve()
    if checkout in where.parents:
        sys.exit(f"release check: {top} imports from the checkout ({where}), not the installed wheel")
    for info in pkgutil.walk_packages(package.__path__, prefix=top + "."):
        if info.name.endswith(".__main__"):
            continue  # `python -m supergen`: importing it runs the command line
        count += 1
        try:
            importlib.import_module(info.name)
        except ImportError as err:
            if OPTIONAL.get(info.name) != getattr(err, "name", None):
                failed.append(f"{info.name}: {type(err).__name__}: {err}")
        except Exception as err:  # noqa: BLE001 - every failure is reported, not just the first
            failed.append(f"{info.name}: {type(err).__name__}: {err}")
if failed:
    sys.exit("release check: modules that do not import from the wheel:\n  " + "\n  ".join(failed))
print(f"imported {count} modules from the installed wheel")
EOF

# The README's quickstart, as a user runs it after `pip install`.
"$WORK/user-env/bin/supergen" render --config toy --output "$WORK/run/quickstart.mp4"
"$WORK/user-env/bin/python" - "$WORK/run/quickstart.mp4" <<'EOF'
import sys
import imageio_ffmpeg

reader = imageio_ffmpeg.read_frames(sys.argv[1])
meta = next(reader)
frames = sum(1 for _ in reader)
if frames != 9 or tuple(meta["size"]) != (256, 256):
    sys.exit(f"release check: the quickstart wrote {frames} frames of {meta['size']}, expected 9 of (256, 256)")
print(f"quickstart video: {frames} frames of {meta['size'][0]}x{meta['size'][1]}")
EOF
echo "release check passed"
