"""Shared pieces of the benchmarks: datasets and models reused across runs, a subprocess
runner that measures wall time and peak memory, the machine's description, JSON output.

Every measured method runs in its own fresh subprocess so that its peak RSS is its own:
a thread polls the process tree at about 20 Hz and sums RSS over it (Dask worker
processes included), and a tiny launcher process reports the kernel's exact
``ru_maxrss`` (``os.wait4``) of the largest single process in the tree. For a one-process method the two agree up to the
polling interval; for a process tree only the polled sum means anything.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import psutil

REPO = Path(__file__).resolve().parents[1]
DEFAULT_SEED = 42
DEFAULT_SAMPLE_ROWS = 200_000
META_FILE = "_bench_meta.json"
MIB = 1024 * 1024


# ---------------------------------------------------------------- measuring a subprocess


@dataclass
class Measured:
    """One subprocess run: exit status, wall seconds, memory, and where its log went."""

    name: str
    argv: list[str]
    returncode: int
    wall_s: float
    peak_rss_tree_mib: float      # polled sum of RSS over the process tree
    maxrss_single_mib: float      # kernel's ru_maxrss: the largest single process
    max_processes: int
    log: str
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peak_rss_mib(self) -> float:
        """The peak to report: the tree sum, or the exact single-process peak if higher
        (polling can miss a short spike of a one-process method)."""
        return max(self.peak_rss_tree_mib, self.maxrss_single_mib)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"peak_rss_mib": self.peak_rss_mib}


class _TreePoller(threading.Thread):
    """Sums RSS over the descendants of a process (the launcher, which is left out) every
    ``interval`` seconds."""

    def __init__(self, pid: int, interval: float = 0.05, refresh_every: int = 5) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.interval, self.refresh_every = interval, refresh_every
        self.peak = 0
        self.max_procs = 0
        self._stop_event = threading.Event()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def run(self) -> None:
        procs: list[psutil.Process] = []
        tick = 0
        while not self._stop_event.is_set():
            if tick % self.refresh_every == 0:
                # Listing children scans /proc; do it at ~4 Hz, read RSS at ~20 Hz.
                with contextlib.suppress(psutil.Error):
                    procs = self.root.children(recursive=True)
                self.max_procs = max(self.max_procs, len(procs))
            total = 0
            for p in procs:
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    continue
            self.peak = max(self.peak, total)
            tick += 1
            self._stop_event.wait(self.interval)


# A small launcher between the benchmark and the measured command: Linux seeds a new
# process's ru_maxrss with its parent's peak RSS at fork/exec, so a command started
# directly by this (large) process would report at least our own peak. The launcher is
# a bare interpreter of a few MiB; it forks the command, waits for it with wait4 and
# writes the command's ru_maxrss (KiB) to a file.
_LAUNCHER = """
import os, sys
out, argv = sys.argv[1], sys.argv[2:]
pid = os.fork()
if pid == 0:
    try:
        os.execvp(argv[0], argv)
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(out, "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(name: str, argv: list[str], log_dir: Path, env: dict[str, str] | None = None,
                 timeout_s: float | None = None) -> Measured:
    """Run ``argv`` (cwd: repository root) and measure it; stdout+stderr go to a log file."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    maxrss_path = log_dir / f"{name}.maxrss"
    maxrss_path.unlink(missing_ok=True)
    load = os.getloadavg()
    launcher = [sys.executable, "-S", "-c", _LAUNCHER, str(maxrss_path), *map(str, argv)]
    with open(log_path, "wb") as log:
        t0 = time.perf_counter()
        proc = subprocess.Popen(launcher, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                                env=env if env is not None else os.environ.copy(),
                                start_new_session=True)
        poller = _TreePoller(proc.pid)
        poller.start()
        timer = None
        if timeout_s:
            timer = threading.Timer(timeout_s, _kill_group, (proc.pid,))
            timer.start()
        try:
            proc.wait()
        finally:
            wall = time.perf_counter() - t0
            if timer is not None:
                timer.cancel()
            poller.stop()
    try:
        maxrss_kib = int(maxrss_path.read_text())
    except (OSError, ValueError):
        maxrss_kib = 0
    return Measured(
        name=name, argv=[str(a) for a in argv], returncode=proc.returncode, wall_s=wall,
        peak_rss_tree_mib=poller.peak / MIB,
        maxrss_single_mib=maxrss_kib * 1024 / MIB,  # Linux reports KiB
        max_processes=poller.max_procs, log=str(log_path), load_before=load,
    )


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)


def require_ok(m: Measured) -> None:
    """Stop the benchmark with the log's tail if a measured command failed."""
    if m.returncode != 0:
        tail = Path(m.log).read_text(errors="replace")[-4000:]
        raise SystemExit(f"{m.name} failed with exit code {m.returncode}: {' '.join(m.argv)}\n"
                         f"--- last lines of {m.log} ---\n{tail}")


def engine_argv() -> list[str]:
    """The ``engine`` console script of this interpreter (not a pyenv shim, whose start-up
    would be charged to the engine), else ``python -m engine``."""
    script = Path(sys.executable).parent / "engine"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "engine"]


def clean_env() -> dict[str, str]:
    """The environment without ENGINE_* overrides, so "default settings" means the defaults."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_")}


def settle(pause_s: float = 1.0) -> None:
    """Flush dirty pages of the previous method's output so the next one does not pay for them."""
    os.sync()
    time.sleep(pause_s)


def warm_cache(paths: list[str]) -> None:
    """Read every input file once so that every method starts from the same warm page cache."""
    buf = bytearray(8 * MIB)
    for p in paths:
        with open(p, "rb", buffering=0) as f:
            while f.readinto(buf):
                pass


# ---------------------------------------------------------------- dataset and model


def dataset_dir(workdir: Path, rows: int, files: int, seed: int) -> Path:
    return workdir / f"customers-r{rows}-f{files}-s{seed}"


def _dataset_meta(rows: int, files: int, seed: int) -> dict[str, Any]:
    from engine.jobs import generate as gen

    return {"rows": rows, "files": files, "seed": seed, "row_group_rows": gen.ROW_GROUP_ROWS}


def ensure_dataset(workdir: Path, rows: int, files: int, seed: int = DEFAULT_SEED,
                   say: Any = print) -> tuple[Path, list[str], bool]:
    """The generated dataset for (rows, files, seed): reused when its ``_bench_meta.json``
    matches and its files are intact, else (re)generated. Returns (dir, files, created)."""
    from engine.jobs.generate import generate

    target = dataset_dir(workdir, rows, files, seed)
    want = _dataset_meta(rows, files, seed)
    meta_path = target / META_FILE
    if meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            listed = meta["file_list"]
            intact = all(Path(target, f["name"]).is_file()
                         and Path(target, f["name"]).stat().st_size == f["size"] for f in listed)
            if {k: meta.get(k) for k in want} == want and intact:
                say(f"reusing dataset {target} ({rows:,} rows, {files} files, seed {seed})")
                return target, [str(target / f["name"]) for f in listed], False
        except (OSError, ValueError, KeyError, TypeError):
            pass
    say(f"generating {rows:,} rows in {files} files (seed {seed}) under {target} ...")
    t0 = time.perf_counter()
    if meta_path.is_file():
        # The bench's own stale dataset (its meta file says so); one written before
        # `engine generate` marked its outputs would not be replaced by --overwrite.
        remove(target)
    result = generate(rows, files, target, seed=seed, overwrite=True)
    secs = time.perf_counter() - t0
    listed = [{"name": Path(p).name, "size": Path(p).stat().st_size} for p in result.paths]
    meta_path.write_text(json.dumps(want | {"file_list": listed, "generate_s": secs}, indent=2) + "\n")
    say(f"generated in {secs:.1f}s")
    return target, list(result.paths), True


def model_features(data: Path, count: int | None) -> list[str] | None:
    """The first ``count`` of the dataset's default feature columns (None: all of them, as
    ``engine train`` picks by default)."""
    if count is None:
        return None
    from engine.io.dataset import discover
    from engine.io.validate import default_features

    names = default_features(discover(data), ["customer_id", "churned"])
    if not 1 <= count <= len(names):
        raise SystemExit(f"--features must be between 1 and {len(names)} for this dataset, got {count}")
    return names[:count]


def ensure_model(workdir: Path, data: Path, sample_rows: int = DEFAULT_SAMPLE_ROWS,
                 seed: int = DEFAULT_SEED, say: Any = print, features: int | None = None) -> tuple[Path, bool]:
    """A model trained once on a ``sample_rows`` sample of ``data`` (target ``churned``),
    reused while the dataset's meta and the sample size are unchanged. ``features``: train
    on the first that many default features only (the benchmark's feature count)."""
    from engine.jobs.train import TrainOptions, train
    from engine.models.artifact import load_model

    names = model_features(data, features)
    suffix = f"-F{features}" if features is not None else ""
    target = workdir / f"model-{data.name}-n{sample_rows}{suffix}"
    data_meta = json.loads((data / META_FILE).read_text())
    want = {"dataset": data.name, "dataset_meta": data_meta, "sample_rows": sample_rows, "seed": seed,
            "features": names}
    meta_path = workdir / f"{target.name}{META_FILE}"
    if meta_path.is_file() and target.is_dir():
        try:
            meta = json.loads(meta_path.read_text())
            if {k: meta.get(k) for k in want} == want and load_model(target).content_hash == meta["content_hash"]:
                say(f"reusing model {target}")
                return target, False
        except Exception:  # any doubt about the old model: train again
            pass
    say(f"training on a {sample_rows:,}-row sample of {data.name} ...")
    t0 = time.perf_counter()
    result = train(TrainOptions(input=str(data), target="churned", output=str(target), features=names,
                                sample_rows=sample_rows, seed=seed, backend="cpu", overwrite=True))
    secs = time.perf_counter() - t0
    meta_path.write_text(json.dumps(want | {"content_hash": result.model.content_hash,
                                            "train_s": secs}, indent=2) + "\n")
    say(f"trained in {secs:.1f}s ({result.model.n_features} features, k={result.model.k})")
    return target, True


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def add_common_args(parser: Any, repeat_help: str) -> None:
    """The options every benchmark script shares."""
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--sample-rows", type=int, default=DEFAULT_SAMPLE_ROWS)
    parser.add_argument("--workdir", type=Path, default=REPO / "bench" / "data")
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    parser.add_argument("--repeat", type=int, default=1, help=repeat_help)
    parser.add_argument("--keep-data", action="store_true",
                        help="Keep the generated datasets and model (default: remove what this run created).")
    parser.add_argument("--timeout", type=float, default=3600.0)


def discard_created(workdir: Path, created_data: list[Path], model: Path, model_created: bool) -> None:
    """Remove the datasets and the model that this run generated (not those it reused)."""
    for data in created_data:
        remove(data)
    if model_created:
        remove(model)
        remove(workdir / f"{model.name}{META_FILE}")


# ---------------------------------------------------------------- describing the run


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for dist in ("customer-scoring-engine", "pyarrow", "numpy", "pandas", "dask", "distributed",
                 "scikit-learn", "psutil"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _os_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return platform.system()


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _git() -> dict[str, Any]:
    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True,
                                  check=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return None

    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "dirty": bool(status) if status is not None else None,
            "dirty_files": status.splitlines() if status else []}


def machine(workdir: Path | None = None) -> dict[str, Any]:
    """Cores, memory, CPU model, OS, versions and git commit of this run."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - non-Linux
        affinity = os.cpu_count()
    info: dict[str, Any] = {
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cores_usable": affinity,
        "memory_total_gib": round(psutil.virtual_memory().total / 1024**3, 2),
        "memory_available_gib_at_start": round(psutil.virtual_memory().available / 1024**3, 2),
        "cgroup_cpu_max": _read("/sys/fs/cgroup/cpu.max"),
        "cgroup_memory_max": _read("/sys/fs/cgroup/memory.max"),
        "os": _os_name(),
        "kernel": platform.release(),
        "machine": platform.machine(),
        "versions": _versions(),
        "git": _git(),
        "loadavg_at_start": os.getloadavg(),
    }
    if workdir is not None:
        usage = shutil.disk_usage(workdir)
        info["workdir_disk_free_gib"] = round(usage.free / 1024**3, 1)
    return info


def write_results(out_dir: Path, prefix: str, rows: int | None, payload: dict[str, Any]) -> tuple[Path, Path]:
    """``<prefix>-<rows>-<timestamp>.json`` and ``<prefix>-latest.json`` under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    name = f"{prefix}-{rows}-{stamp}.json" if rows is not None else f"{prefix}-{stamp}.json"
    text = json.dumps(payload, indent=2, default=str) + "\n"
    stamped, latest = out_dir / name, out_dir / f"{prefix}-latest.json"
    stamped.write_text(text)
    latest.write_text(text)
    return stamped, latest


def now_utc() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def engine_manifest_summary(output: Path) -> dict[str, Any]:
    """The engine's own account of a run: settings, totals, seconds, and summed per-part
    read / compute / write seconds (where the time went, per task thread)."""
    manifest = json.loads((output / "_manifest.json").read_text())
    parts = manifest.get("partitions", [])
    summed = {k: sum(p.get("seconds", {}).get(k, 0.0) for p in parts) for k in ("read", "compute", "write")}
    cpu = {k: sum(p.get("cpu_seconds", {}).get(k, 0.0) for p in parts) for k in ("read", "compute", "write")}
    stage = sum(p.get("seconds", {}).get("stage", 0.0) for p in parts)
    workers = sorted({p.get("worker", "?") for p in parts})
    return {"settings": manifest.get("settings"), "totals": manifest.get("totals"),
            "seconds": manifest.get("seconds"), "task_seconds_summed": summed,
            "task_cpu_seconds_summed": cpu, "stage_wait_seconds_summed": stage,
            "distinct_worker_processes": len(workers),
            # GPU runs: bytes the stage copied host -> device, and the data's own bytes.
            "device_bytes_in": sum(int(p.get("device_bytes_in", 0)) for p in parts),
            "data_bytes": int((manifest.get("totals") or {}).get("rows_in", 0))
            * len((manifest.get("model") or {}).get("features", [])) * 8}


def thread_seconds(split: dict[str, float]) -> dict[str, float]:
    """Task thread-seconds by step (read / compute / write) and their total."""
    out = {k: float(split.get(k, 0.0)) for k in ("read", "compute", "write")}
    return out | {"total": sum(out.values())}


def engine_score_argv(data: Path, model: Path, output: Path, extra: list[str] | tuple[str, ...] = ()) -> list[str]:
    """``engine score`` on the CPU backend, quiet, replacing ``output``; ``extra`` flags last."""
    return [*engine_argv(), "score", "--input", str(data), "--model", str(model), "--output", str(output),
            "--backend", "cpu", "--quiet", "--overwrite", *extra]


def measure_engine(name: str, data: Path, model: Path, output: Path, logs: Path,
                   extra: list[str] | tuple[str, ...] = (), timeout_s: float | None = None) -> dict[str, Any]:
    """One measured ``engine score`` in a fresh process (no ENGINE_* variables), from an
    empty output directory and flushed page cache writes; the output is removed after."""
    remove(output)
    settle()
    m = run_measured(name, engine_score_argv(data, model, output, extra), logs, env=clean_env(),
                     timeout_s=timeout_s)
    require_ok(m)
    summary = engine_manifest_summary(output)
    remove(output)
    rows = summary["totals"]["rows_in"]
    inner = summary["seconds"]["total"]
    return m.to_dict() | {"rows": rows, "inner_s": inner, "rows_per_s": rows / m.wall_s,
                          "inner_rows_per_s": rows / inner,
                          "thread_seconds": thread_seconds(summary["task_seconds_summed"]), "engine": summary}


def measure_floor(name: str, data: Path, model: Path, output: Path, logs: Path, pool: int,
                  values: str = "random", timeout_s: float | None = None) -> dict[str, Any]:
    """The I/O floor (``bench.methods floor``) in a fresh process, reported like :func:`measure_engine`."""
    remove(output)
    settle()
    result_file = logs / f"{name}.json"
    m = run_measured(name, [sys.executable, "-m", "bench.methods", "floor", "--input", str(data), "--model",
                            str(model), "--output", str(output), "--pool", str(pool), "--values", values,
                            "--result", str(result_file)], logs, env=clean_env(), timeout_s=timeout_s)
    require_ok(m)
    remove(output)
    data_ = json.loads(result_file.read_text())
    rows, inner = data_["rows"], data_["loop_s"]
    return m.to_dict() | {"rows": rows, "inner_s": inner, "rows_per_s": rows / m.wall_s,
                          "inner_rows_per_s": rows / inner, "pool": pool,
                          "thread_seconds": thread_seconds(data_["step_seconds_summed"]), "method": data_}


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall and inner time over repeated runs, the highest peak RSS."""
    import statistics

    rows = runs[0]["rows"]
    wall = statistics.median(r["wall_s"] for r in runs)
    inner = statistics.median(r["inner_s"] for r in runs)
    split = {k: statistics.median(r["thread_seconds"][k] for r in runs) for k in ("read", "compute", "write")} \
        if all("thread_seconds" in r for r in runs) else {}
    return {"rows": rows, "wall_s": wall, "inner_s": inner, "rows_per_s": rows / wall,
            "inner_rows_per_s": rows / inner, "thread_seconds": thread_seconds(split),
            "peak_rss_mib": max(r["peak_rss_mib"] for r in runs),
            "peak_rss_tree_mib": max(r["peak_rss_tree_mib"] for r in runs),
            "maxrss_single_mib": max(r["maxrss_single_mib"] for r in runs),
            "max_processes": max(r["max_processes"] for r in runs),
            "parts": runs[0]["engine"]["totals"]["parts"] if "engine" in runs[0] else None,
            "runs": runs}
