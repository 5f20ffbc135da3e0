# Sourced by scripts/gpu_check.sh and scripts/gpu_accuracy.sh: sets PY to a Python that has torch and
# everything the pipeline imports.
#
# A GPU node's python3 may have torch (2.11 and later) but not dvc, dvclive, albumentations or
# pydantic, and may reach no package index: scripts/gpu_wheels.sh, run on a machine with a package
# index, fetches them into .whl/, which is copied to the node with the repository. They go into a
# venv that sees the node's own packages through a .pth file (`--system-site-packages` would not
# where the node's python3 is itself a venv: a venv made from it sees only the base interpreter's
# packages). A venv, not `pip install --target`, because the tests and dvc run `dvc` and `python`
# from the interpreter's own bin/ and drop PYTHONPATH. Where the packages are already there (the
# project's venv, CI, a --dry-run) nothing is installed.
#
#     PYTHON=python3 GPU_VENV=/tmp/gpu-venv      # the defaults
#     . scripts/gpu_env.sh && gpu_env && echo "$PY"  # by hand: install, then use $PY (and its bin/dvc)

PY=${PYTHON:-python3}
GPU_VENV=${GPU_VENV:-/tmp/gpu-venv}
# What a node image typically lacks (its torch, numpy, scipy, ... are checked by the parts that use them).
NEEDED="import dvc.repo, dvclive, albumentations, pydantic"

gpu_env() {
  if "$PY" -c "$NEEDED" 2>/dev/null; then
    echo "$PY has every package the project imports: nothing to install"
    return 0
  fi
  if [ -x "$GPU_VENV/bin/python" ] && "$GPU_VENV/bin/python" -c "$NEEDED" 2>/dev/null; then
    PY=$GPU_VENV/bin/python  # installed by an earlier run on this machine
    echo "using $PY, installed earlier"
    return 0
  fi
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "ERROR: $PY lacks packages the project imports (dvc, dvclive, albumentations or pydantic) and" \
         "there is no .whl/ here to install them from. Run scripts/gpu_wheels.sh on a machine with a" \
         "package index and copy .whl/ to this machine with the repository (or set PYTHON to a" \
         "python that has them)."
    return 1
  fi
  local base_site
  base_site=$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  rm -rf "$GPU_VENV"
  "$PY" -m venv --without-pip "$GPU_VENV" || { echo "ERROR: $PY -m venv failed"; return 1; }
  local site
  site=$("$GPU_VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])') || return 1
  # addsitedir, not a bare path: it also runs the .pth files of the node's site-packages.
  echo "import site; site.addsitedir('$base_site')" > "$site/device-site-packages.pth"
  # pip itself comes from the node's site-packages; it installs into the venv it runs in.
  "$GPU_VENV/bin/python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
    --disable-pip-version-check .whl/*.whl || { echo "ERROR: installing .whl/*.whl failed"; return 1; }
  if ! "$GPU_VENV/bin/python" -c "$NEEDED"; then
    echo "ERROR: after installing .whl/, $GPU_VENV/bin/python still cannot import all of: $NEEDED"
    return 1
  fi
  PY=$GPU_VENV/bin/python
  echo "installed $(ls .whl/*.whl | wc -l) wheels into $GPU_VENV (over $base_site)"
}

# A copy of the working tree on the node may come without .git; the tests copy the tree with
# `git ls-files` and dvc repro needs a repository, so one is made of the copy as it is.
gpu_git() {
  git rev-parse --is-inside-work-tree >/dev/null 2>&1 && return 0
  git init -q && git add -A && git -c user.name=gpu-check -c user.email=gpu-check@localhost \
    -c commit.gpgsign=false commit -q -m "the node's copy of the working tree" \
    && echo "made a git repository of the working tree (the copy had none)"
}
