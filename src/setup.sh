#!/usr/bin/env bash
# Installs what madlib_dl needs on a Debian 12 machine and skips what is already there:
#   1. PostgreSQL 15 with PL/Python 3, libpq and server headers, gcc and make (apt, as root): the
#      server headers and PGXS build the extension's small C library (src/madlib_dl.c); Debian's
#      server headers include <gssapi/gssapi.h> (libkrb5-dev) without depending on it;
#   2. a venv built from Debian's /usr/bin/python3 (the interpreter plpython3u embeds) holding
#      requirements.txt, requirements-dev.txt and requirements-client.txt (their dependencies at
#      constraints.txt's versions), with psycopg2 compiled against the system libpq;
#   3. madlib_dl itself, installed editable into that venv;
#   4. the notebook client (client/: the madlib-dl-client distribution, import package madlib_dl_client),
#      installed editable into that venv with --no-deps: its pandas, matplotlib and tqdm come with
#      requirements-client.txt, and its psycopg2 is requirements.txt's, built from source, rather than the
#      psycopg2-binary that `pip install ./client` brings on a laptop.
# Usage: src/setup.sh VENV_DIR
set -euo pipefail

# This machine's pip.conf may list local package folders that do not exist; pip warns about each one.
# PIP_NO_BINARY=psycopg2 draws a deprecation notice about pip's wheel cache that asks nothing of a user.
quiet_pip() { "$venv/bin/pip" "$@" 2>&1 | { grep -v -e "^WARNING: Location 'file:" -e "^DEPRECATION: --no-binary" || true; }; }

venv=${1:?usage: setup.sh VENV_DIR}
repo=$(cd "$(dirname "$0")/.." && pwd)
apt_packages=(postgresql-15 postgresql-plpython3-15 postgresql-server-dev-15 libkrb5-dev libpq-dev python3-venv python3-dev gcc make)

missing=()
for p in "${apt_packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" != 0 ]; then
        echo "setup: missing Debian packages: ${missing[*]}; run as root or install them with apt-get" >&2
        exit 1
    fi
    echo "setup: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The venv must be Debian's interpreter: plpython3u loads /usr/lib/x86_64-linux-gnu/libpython3.11.so,
# and compiled wheels (TensorFlow, numpy) must match it.
if [ ! -x "$venv/bin/python" ] || [ "$(readlink -f "$venv/bin/python")" != "$(readlink -f /usr/bin/python3)" ]; then
    echo "setup: creating venv $venv from /usr/bin/python3"
    rm -rf "$venv"
    /usr/bin/python3 -m venv "$venv"
fi

stamp="$venv/.madlib_dl-requirements"
pinned=("$repo/requirements.txt" "$repo/requirements-dev.txt" "$repo/requirements-client.txt" "$repo/constraints.txt")
if ! cat "${pinned[@]}" | cmp -s - "$stamp"; then
    echo "setup: installing pinned Python packages (requirements.txt, requirements-dev.txt, requirements-client.txt) into $venv" \
         "(TensorFlow: about 600 MB, a few minutes the first time)"
    PIP_NO_BINARY=psycopg2 quiet_pip install -q --disable-pip-version-check -r "$repo/requirements.txt" \
        -r "$repo/requirements-dev.txt" -r "$repo/requirements-client.txt" -c "$repo/constraints.txt"
    cat "${pinned[@]}" > "$stamp"
fi

# Run from / so the check sees the installed package, not the checkout in the current directory.
installed=$(cd / && "$venv/bin/python" -c 'import madlib_dl, os; print(os.path.dirname(os.path.dirname(madlib_dl.__file__)))' 2>/dev/null || true)
if [ "$installed" != "$repo" ]; then
    echo "setup: installing madlib_dl (editable) into $venv"
    (cd "$repo" && quiet_pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .)
fi
# The same check for the client. Its `madlib-dl` command file replaces madlib_dl's, which is fine: in a venv
# that holds madlib_dl it hands every command to `python -m madlib_dl.tools.cli` (client/madlib_dl_client/cli.py).
installed=$(cd / && "$venv/bin/python" -c 'import madlib_dl_client, os; print(os.path.dirname(os.path.dirname(madlib_dl_client.__file__)))' 2>/dev/null || true)
if [ "$installed" != "$repo/client" ]; then
    echo "setup: installing the notebook client madlib_dl_client (editable) into $venv"
    (cd "$repo" && quiet_pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e ./client)
fi
echo "setup: done ($venv)"
