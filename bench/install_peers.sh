#!/usr/bin/env bash
# Installs the bench's peers (KerasTuner, Ray Tune: bench/requirements-peers.txt) into VENV/bench-peers,
# a folder of their own that only the peers' processes put on their PYTHONPATH (bench/peers.py): the venv
# itself keeps exactly the pinned packages (tests/unit/test_constraints.py), and `make test` never sees
# these. Skipped when the folder's stamp holds this file's pins and the project's (requirements*.txt,
# constraints.txt: the venv the peers run beside), so `make bench` pays a `cmp`.
# Before installing, pip resolves the file against the venv with every pin of the project as a
# constraint: it must want exactly the file's packages, nothing the venv holds at another version (a
# pin here that needs a newer numpy, say, fails here rather than at run time).
# Usage: bench/install_peers.sh VENV_DIR
set -euo pipefail

venv=${1:?usage: install_peers.sh VENV_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
requirements="$repo/bench/requirements-peers.txt"
target="$venv/bench-peers"
stamp="$target/.requirements-peers"

pins=("$requirements" "$repo/requirements.txt" "$repo/requirements-dev.txt" "$repo/requirements-client.txt"
      "$repo/constraints.txt")
if cat "${pins[@]}" | cmp -s - "$stamp"; then
    exit 0
fi
# This machine's pip.conf may list local package folders that do not exist; pip warns about each one.
quiet_pip() { "$venv/bin/pip" "$@" 2>&1 | { grep -v -e "^WARNING: Location 'file:" || true; }; }

echo "bench: installing KerasTuner and Ray Tune (bench/requirements-peers.txt) into $target (about 450 MB)"
report=$(mktemp)
trap 'rm -f "$report"' EXIT
quiet_pip install -q --disable-pip-version-check --dry-run --report "$report" -r "$requirements" \
    -c "$repo/constraints.txt" -c "$repo/requirements.txt" -c "$repo/requirements-dev.txt" \
    -c "$repo/requirements-client.txt"
"$venv/bin/python" - "$report" "$requirements" <<'EOF'
import json, re, sys

canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()
wanted = {canonical(i["metadata"]["name"]): i["metadata"]["version"] for i in json.load(open(sys.argv[1]))["install"]}
pinned = {}
for line in open(sys.argv[2]):
    line = line.split("#", 1)[0].strip()
    if "==" in line:
        name, version = line.split("==")
        pinned[canonical(name.split("[")[0])] = version
if wanted != pinned:
    extra = {n: v for n, v in wanted.items() if pinned.get(n) != v}
    missing = {n: v for n, v in pinned.items() if wanted.get(n) != v}
    sys.exit(f"bench: bench/requirements-peers.txt does not install cleanly beside the venv: pip wants "
             f"{extra or 'nothing else'}, the file pins {missing or 'nothing else'} (pin every new dependency; "
             "change nothing the venv holds)")
EOF
rm -rf "$target"
quiet_pip install -q --disable-pip-version-check --no-deps --target "$target" -r "$requirements"
cat "${pins[@]}" > "$stamp"
