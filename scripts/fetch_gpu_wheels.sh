#!/usr/bin/env bash
# Download the wheels the GPU machine's image lacks into wheels/ (or $1), for its Python 3.12 on
# x86-64 (it has no network). Carry the folder there and run `WHEELS=wheels scripts/gpu_check.sh`,
# which installs every wheel of the folder whose distribution the machine does not have.
#
#   scripts/fetch_gpu_wheels.sh [DEST]    # resolve, then download
#   scripts/fetch_gpu_wheels.sh --list    # resolve and print NAME==VERSION, download nothing
#
# The list is derived, not kept by hand: pip resolves (without installing) the image's packages
# (IMAGE below) once alone and once together with supergen's dependencies from pyproject.toml;
# what the second resolution adds is what the image lacks. A package both resolutions have at
# different versions is reported: the image keeps its own, so supergen runs with that one.
# Resolving downloads package metadata only (about two minutes each), not torch's wheels.
#
# WITHOUT="NAME ..." leaves those distributions out and lists them in DEST/LEFT_OUT, which
# gpu_check.sh then accepts as missing. The folder is about 74 MB, 68 MB of it imageio-ffmpeg (its
# wheel holds an ffmpeg binary), over the GPU lease's 64 MiB for carried files; only writing video
# needs it and no step of the kit writes video, so there: WITHOUT=imageio-ffmpeg (about 6 MB left).
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PYTHON=${PYTHON:-python3}
# The GPU image's Python packages (H100/H200 image of the GPU lease): torch, triton, transformers,
# accelerate, einops, imageio, opencv-python-headless, each with its dependencies.
IMAGE=(torch==2.11.0 triton==3.6.0 transformers==5.17.0 accelerate==1.15.0 einops imageio opencv-python-headless)
# supergen's dependencies at the versions CI tests, where pyproject.toml allows a range.
PINS=(diffusers==0.42.1)
# Its Python and platform: every manylinux tag an x86-64 glibc 2.35 system accepts.
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --platform linux_x86_64
          --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for minor in $(seq 5 35); do PLATFORM+=(--platform "manylinux_2_${minor}_x86_64"); done

LIST=0
[[ "${1:-}" == --list ]] && LIST=1 && shift
DEST=${1:-wheels}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

mapfile -t DEPS < <("$PYTHON" -c 'import sys, tomllib
print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' "$REPO/pyproject.toml")

# resolve NAME REQUIREMENTS...: pip's install report of REQUIREMENTS for the image's platform.
resolve() {
    local name=$1
    shift
    echo "fetch_gpu_wheels: resolving $name" >&2
    "$PYTHON" -m pip install -q --dry-run --ignore-installed --target "$WORK/target" "${PLATFORM[@]}" \
        --report "$WORK/$name.json" "$@" 2> >(grep -v "^WARNING: Location" >&2)
}
resolve image "${IMAGE[@]}"
resolve with-supergen "${IMAGE[@]}" "${DEPS[@]}" "${PINS[@]}"

"$PYTHON" - "$WORK" >"$WORK/lacking.txt" <<'PY'
import json, re, sys

def resolved(path):
    report = json.load(open(path))
    return {re.sub(r"[-_.]+", "-", i["metadata"]["name"]).lower(): i["metadata"]["version"] for i in report["install"]}

image, wanted = resolved(f"{sys.argv[1]}/image.json"), resolved(f"{sys.argv[1]}/with-supergen.json")
for name, version in sorted(wanted.items()):
    if name not in image:
        print(f"{name}=={version}")
    elif image[name] != version:
        print(f"fetch_gpu_wheels: {name}: the image has {image[name]}, supergen's resolution {version}; "
              f"the image's stays", file=sys.stderr)
PY
if ((LIST)); then
    cat "$WORK/lacking.txt"
    exit 0
fi
mkdir -p "$DEST"
: >"$DEST/LEFT_OUT"
LACKING=()
while read -r pinned; do
    if [[ " ${WITHOUT:-} " == *" ${pinned%%==*} "* ]]; then echo "${pinned%%==*}" >>"$DEST/LEFT_OUT"; else LACKING+=("$pinned"); fi
done <"$WORK/lacking.txt"
"$PYTHON" -m pip download -q --no-deps "${PLATFORM[@]}" -d "$DEST" "${LACKING[@]}"
ls -l "$DEST"
