#!/usr/bin/env bash
# Download, on a machine with network, the wheels that bench/device_check.sh installs on a
# lent GPU machine that has no Dask and no network (Python 3.12, x86-64 there), into .whl/.
# dask-cuda 26.10 pins dask/distributed to 2026.7.1 (rapids-dask-dependency); the rest of
# what they need (cloudpickle, toolz, msgpack, psutil, jinja2, pandas, numba, nvidia-ml-py,
# cuda-core, ...) is already on that machine.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p .whl
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 --platform any -d .whl \
    dask==2026.7.1 distributed==2026.7.1 dask-cuda==26.10.0 rapids-dask-dependency==26.10.0 \
    partd==1.4.2 locket==1.0.0 tblib==3.2.2 zict==3.0.0 tornado==6.6.1
ls -la .whl
