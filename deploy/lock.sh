#!/bin/sh
# Regenerate the image's hashed locks (Linux, CPython 3.11) from pyproject.toml with uv
# (pip install uv). Existing pins are kept unless a constraint moved; pass --upgrade to take the
# newest versions. Review the diff, run tests/test_deploy.py, then rebuild the image.
#   sh deploy/lock.sh [--upgrade]
set -eu
cd "$(dirname "$0")/.."

compile() {
  uv pip compile --quiet --generate-hashes --python-version 3.11 --python-platform linux \
    --custom-compile-command "sh deploy/lock.sh" "$@"
}

# the sidecar image (the default target): the sidecar extra only
compile pyproject.toml --extra sidecar -o deploy/requirements-sidecar.txt "$@"
# the compose stack's demo app (the demo target)
compile pyproject.toml --extra sidecar --extra demo -o deploy/requirements-demo.txt "$@"
# the build backend of [build-system], so that building the wheel resolves nothing either
python3 -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' \
  | compile - -o deploy/requirements-build.txt "$@"
