#!/usr/bin/env bash
# Fetch, on a machine with a package index, the wheels an offline GPU node lacks into .whl/
# (gitignored), for scripts/gpu_check.sh and scripts/gpu_accuracy.sh to install on the node
# (scripts/gpu_env.sh). See docs/gpu.md, "An offline GPU node".
#
#     scripts/gpu_wheels.sh            # about 23 MiB; then copy .whl/ to the node with the repository
#
# The node's python3 is taken to be CPython 3.12 on x86-64 with torch (2.11.0 and torchvision
# 0.26.0 or later), numpy, scipy, scikit-learn, pandas, matplotlib, pyyaml, tqdm,
# opencv-python-headless, pytest, pytest-xdist, rich, requests, aiohttp, networkx, ..., as a GPU
# node image often has. What the pipeline and its tests need beyond that is dvc, dvclive,
# albumentations and pydantic, and these of their dependencies, at the versions requirements.txt
# resolves to (`pip freeze` of its venv). --no-deps: each one is named; a missing one fails at
# import on the node.
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=(
  # the four the project imports
  dvc==3.67.1 dvclive==3.49.1 albumentations==2.0.8 pydantic==2.14.3
  # pydantic
  pydantic-core==2.50.4 annotated-types==0.8.0 typing-inspection==0.4.5
  # albumentations
  albucore==0.0.24 simsimd==6.5.16 stringzilla==5.3.2
  # dvc and dvclive
  dvc-data==3.18.3 dvc-http==2.32.0 dvc-objects==5.2.0 dvc-render==1.0.2 dvc-studio-client==0.23.0
  dvc-task==0.40.2 scmrepo==3.6.2 dulwich==1.2.21 pygit2==1.21.0 cffi==2.1.1 pycparser==3.12
  gitpython==3.2.1 gitdb==4.0.12 smmap==5.0.3 asyncssh==2.24.1 cryptography==50.0.2
  celery==5.7.0 kombu==5.7.0 amqp==5.4.2 vine==5.1.0 billiard==4.3.2 click-didyoumean==0.3.1
  click-plugins==1.1.1.2 click-repl==0.4.1 prompt-toolkit==3.0.53 wcwidth==0.9.4 tzlocal==5.4.5
  gto==1.10.1 entrypoints==0.4.2 pydantic-settings==2.16.3 python-dotenv==1.2.4 ruamel-yaml==0.19.1
  semver==3.1.2 hydra-core==1.3.8 omegaconf==2.3.1 aiohttp-retry==2.9.1 appdirs==1.4.4
  atpublic==9.0.0 configobj==5.0.9 dictdiffer==0.10.0 diskcache==5.6.3 distro==1.9.0 dpath==2.2.0
  flatten-dict==0.5.0 flufl-lock==9.2.0 funcy==2.1 grandalf==0.8 iterative-telemetry==0.0.10
  orjson==3.13.0 platformdirs==4.14.9 pydot==4.0.1 pygtrie==2.6.2 shortuuid==1.0.13 shtab==1.13.0
  sqltrie==0.11.3 tomlkit==0.14.0 voluptuous==0.16.0 zc-lockfile==4.0
)
# omegaconf's parser runtime exists on PyPI only as a source archive: built on this machine (pure Python).
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)

PLATFORMS=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_26 manylinux_2_17 manylinux2014 manylinux1; do
  PLATFORMS+=(--platform "${tag}_x86_64")
done

rm -rf .whl && mkdir .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d .whl "${WHEELS[@]}"
python3 -m pip wheel -q --no-deps -w .whl "${SOURCE_ONLY[@]}"

count=$(ls .whl/*.whl | wc -l)
expected=$(( ${#WHEELS[@]} + ${#SOURCE_ONLY[@]} ))
[ "$count" -eq "$expected" ] || { echo "ERROR: .whl/ holds $count wheels, expected $expected" >&2; exit 1; }
size_kib=$(du -sk .whl | cut -f1)
# About 23 MiB is expected; over 40 MiB means wheels were fetched that the node should not need.
[ "$size_kib" -le $((40 * 1024)) ] || { echo "ERROR: .whl/ is $((size_kib / 1024)) MiB, over 40 MiB" >&2; exit 1; }
echo "$count wheels, $((size_kib / 1024)) MiB in .whl/"
