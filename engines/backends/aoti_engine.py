"""The aoti backend: the backbone exported with ``torch.export`` and compiled by AOTInductor into a ``.pt2`` package.

The PyTorch-native ahead-of-time engine: it runs wherever torch and a C++ compiler do (the CPU,
CUDA GPUs), with no TensorRT. The VMP stage stays in the pipeline, as for every backend.

- Build: ``torch.export.export`` of the model (cast to the precision, the EMIM kernel chosen for
  the device) with a dynamic batch dimension 1..max_batch, from an example batch of 2 (exported
  with batch 1, export specialises the batch to 1), then
  ``torch._inductor.aoti_compile_and_package``. On 2 CPU cores the demo model takes ~10 s to
  export and ~100-130 s to compile; progress is logged every few seconds.
- Cache: :mod:`emim_stream.engines.backends.engine_cache`, beside the TensorRT plans, keyed by :class:`AotiKey`
  (weights hash, model code, input spec, batch range, precision, EMIM kernel, torch version,
  device kind, GPU name and compute capability or the CPU's vector ISA), with a JSON sidecar. A
  package for another torch or device, or a corrupt / truncated one, is rebuilt with a log line.
- Run: ``torch._inductor.aoti_load_package`` (milliseconds for a cached package); ``infer`` calls
  it with the batch as it comes (any size up to max_batch).
- Warm-up (docs/architecture.md#warm-up): :class:`BackgroundBuild` builds a missing package in a spawned
  process while another engine serves; :func:`emim_stream.engines.backends.select.start_engine` uses it.
  That process yields to the serving engine (lowest CPU priority, one thread, one compile worker) and
  keeps Inductor's own caches under the engine cache (``inductor/``) for the next build.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import logging
import multiprocessing
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import torch

from emim_stream.engines.backends.base import EngineBase, EngineInfo, InputSpec, Precision, check_clips
from emim_stream.engines.backends.candidate import cache_dir, check_backend
from emim_stream.engines.backends.engine_cache import CacheKey, EngineCache, load_or_build
from emim_stream.engines.backends.model_source import ModelSource
from emim_stream.engines.backends.torch_engine import DTYPES, apply_kernel
from emim_stream.engines.errors import BackendUnavailableError, EmimError
from emim_stream.engines.layers.neighborhood import choose_kernel

if TYPE_CHECKING:
    from emim_stream.engines.backends.base import EngineConfig
    from emim_stream.engines.backends.candidate import Candidate

__all__ = [
    "AotiEngine",
    "AotiKey",
    "BackgroundBuild",
    "NotBuiltError",
    "aoti_key",
    "build_package",
    "cpp_compiler",
    "open_aoti",
    "yield_cpu",
]

log = logging.getLogger(__name__)

_PROGRESS_EVERY_S = 10.0
_INDUCTOR_CACHE = "inductor"
"""Folder of the engine cache that holds Inductor's own caches (headers, kernels) between builds, and the
exported program of a build stopped before its end."""
_MODEL_PACKAGES = ("models", "layers")
"""Packages under ``engines/`` whose source defines the graph (hashed into the key)."""


@functools.cache
def model_code_sha256() -> str:
    """SHA-256 of the model's source files: a package from other model code is not reused."""
    root = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for path in sorted(p for pkg in _MODEL_PACKAGES for p in (root / pkg).glob("*.py")):
        digest.update(f"{path.parent.name}/{path.name}\0".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def cpp_compiler() -> str:
    """The C++ compiler AOTInductor will use (``$CXX`` or g++), after checking that it runs.

    Raises:
        BackendUnavailableError: none found.
    """
    from torch._inductor import config
    from torch._inductor.cpp_builder import get_cpp_compiler
    from torch._inductor.exc import InvalidCxxCompiler

    try:
        return get_cpp_compiler()
    except InvalidCxxCompiler:
        tried = ", ".join(c for c in config.cpp.cxx if c) if isinstance(config.cpp.cxx, tuple) else config.cpp.cxx
        raise BackendUnavailableError(
            "aoti", f"no C++ compiler to build the package (tried {tried}); install g++ or set CXX"
        ) from None


@dataclass(frozen=True, slots=True)
class AotiKey(CacheKey):
    """Everything an AOTInductor package depends on. Two equal keys may share one package."""

    toolkit: ClassVar[str] = "aoti"
    kind: ClassVar[str] = "package"
    suffix: ClassVar[str] = ".pt2"
    prefix: ClassVar[str] = "aoti-"

    weights_sha256: str
    model_name: str
    model_code_sha256: str
    kernel: str
    """The EMIM kernel compiled into the package (reference, triton)."""
    torch_version: str
    device_kind: str
    """'cpu' or 'cuda'."""
    cpu_capability: str
    """The vector ISA Inductor compiles CPU code for (e.g. 'AVX512'); '' on CUDA."""


def aoti_key(source: ModelSource, spec: InputSpec, precision: str, kernel: str, device: torch.device) -> AotiKey:
    """The cache key of a package of ``source`` for this input, precision, kernel, torch and device."""
    return AotiKey.for_input(
        spec,
        precision,
        device,
        weights_sha256=source.weights_sha256,
        model_name=source.model_name,
        model_code_sha256=model_code_sha256(),
        kernel=kernel,
        torch_version=torch.__version__,
        device_kind=device.type,
        cpu_capability="" if device.type == "cuda" else torch.backends.cpu.get_cpu_capability(),
    )


@contextmanager
def _progress(phase: str, expect: str = "") -> Iterator[None]:
    """Log ``phase`` now, the elapsed time every few seconds while it runs, and its duration at the end."""
    done = threading.Event()
    start = time.perf_counter()
    log.info("aoti build: %s%s", phase, f" ({expect})" if expect else "")

    def tick() -> None:
        while not done.wait(_PROGRESS_EVERY_S):
            log.info("aoti build: %s, %.0f s elapsed", phase, time.perf_counter() - start)

    ticker = threading.Thread(target=tick, name="aoti-progress", daemon=True)
    ticker.start()
    try:
        yield
    finally:
        done.set()
        ticker.join()
    log.info("aoti build: %s done in %.1f s", phase, time.perf_counter() - start)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]


def _load_exported(path: Path) -> torch.export.ExportedProgram | None:
    """The program an earlier, stopped build exported to ``path`` (None: none, or not readable)."""
    if not path.is_file():
        return None
    try:
        return torch.export.load(path)
    except Exception as err:  # cut short by a kill, or unreadable: export again
        log.info("aoti build: not resuming from %s (%s)", path.name, _first_line(err))
        return None


def _save_exported(program: torch.export.ExportedProgram, path: Path) -> None:
    """Keep ``program`` at ``path`` (written whole or not at all) for a build that is stopped before its end."""
    part = path.with_suffix(".part.pt2")  # torch warns about a name that does not end in .pt2
    try:
        torch.export.save(program, part)
        part.chmod(0o600)  # as the cache's own files
        os.replace(part, path)
    except Exception as err:  # disk full, or a graph the serialiser refuses: the build goes on without it
        part.unlink(missing_ok=True)
        log.info("aoti build: the exported program is not kept (%s)", _first_line(err))


def build_package(
    source: ModelSource,
    spec: InputSpec,
    kernel: str,
    device: torch.device,
    previous_s: float | None = None,
    exported: Path | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """Export and compile ``source.model`` into package bytes (the model itself is left as it is).

    Args:
        previous_s: how long the last build of this model took (shown in the progress lines).
        exported: where to keep the exported program until the package is built: a build stopped
            after its export resumes from there (None: export every time).

    Returns:
        (package bytes, sidecar extras: timings, dynamic batch range, compiler).

    Raises:
        BackendUnavailableError: no C++ compiler, or export or compilation failed (one-line reason;
            the traceback is logged at debug level).
    """
    compiler = cpp_compiler()
    example_batch = min(2, spec.max_batch)  # export specialises a batch of 1: the package would take only 1
    start = time.perf_counter()
    program = None if exported is None else _load_exported(exported)
    if program is not None:
        log.info("aoti build: 1/2 torch.export resumed from %s (kept by a stopped build)", exported)
    else:
        model = copy.deepcopy(source.model).to(device=device, dtype=spec.dtype).eval()
        apply_kernel(model, kernel)
        example = torch.zeros(spec.shape(example_batch), dtype=spec.dtype, device=device)
        dynamic = ({0: torch.export.Dim("batch", min=1, max=spec.max_batch)},) if spec.max_batch > 1 else None
        try:
            with _progress(f"1/2 torch.export of {source.model_name}, batch 1..{spec.max_batch}"), torch.no_grad():
                program = torch.export.export(model, (example,), dynamic_shapes=dynamic)
        except Exception as err:  # export raises many types (UserError, Unsupported, RuntimeError, ...)
            log.debug("aoti: torch.export failed", exc_info=True)
            raise BackendUnavailableError("aoti", f"torch.export failed ({_first_line(err)})") from None
        if exported is not None:
            _save_exported(program, exported)
    export_s = time.perf_counter() - start
    expect = f"the last build took {previous_s:.0f} s" if previous_s else "minutes on a small CPU"
    with tempfile.TemporaryDirectory(prefix="emim-aoti-") as tmp:
        try:
            with _progress(f"2/2 AOTInductor compile with {os.path.basename(compiler)}", expect):
                path = torch._inductor.aoti_compile_and_package(program, package_path=os.path.join(tmp, "model.pt2"))
        except Exception as err:  # the compiler, Inductor lowering, a C++ error: all mean "no package"
            log.debug("aoti: AOTInductor compile failed", exc_info=True)
            raise BackendUnavailableError("aoti", f"AOTInductor compile failed ({_first_line(err)})") from None
        data = Path(path).read_bytes()
    build_s = time.perf_counter() - start
    log.info("aoti: package built in %.0f s (export %.0f s), %.1f MB", build_s, export_s, len(data) / 2**20)
    info = {
        "build_s": round(build_s, 1),
        "export_s": round(export_s, 1),
        "batch_range": [1, spec.max_batch],
        "example_batch": example_batch,
        "compiler": compiler,
    }
    return data, info


class NotBuiltError(BackendUnavailableError):
    """No valid cached package, and the engine was opened with ``build=False``.

    Args:
        reason: which package is missing.
        previous_s: how long the last build of this model took on this box (None: never built here).
    """

    def __init__(self, reason: str, previous_s: float | None = None) -> None:
        super().__init__("aoti", reason)
        self.previous_s = previous_s


def _previous_build_s(cache: EngineCache, key: AotiKey) -> float | None:
    """Build time recorded by the newest sidecar of a package of the same model (any key)."""
    for sidecar in sorted(cache.root.glob(f"{key.prefix}*.json"), key=lambda p: p.stat().st_mtime, reverse=True):
        try:
            record = json.loads(sidecar.read_text())
        except (OSError, ValueError):
            continue
        if record.get("model_name") == key.model_name and isinstance(record.get("build_s"), (int, float)):
            return float(record["build_s"])
    return None


def _spec_for(source: ModelSource, precision: str, max_batch: int) -> InputSpec:
    p = Precision(precision)
    if p not in DTYPES:
        raise BackendUnavailableError("aoti", f"precision {p.value} needs a TensorRT Q/DQ plan (aoti: fp32/fp16/bf16)")
    clip = source.clip
    return InputSpec(clip.frames, clip.height, clip.width, DTYPES[p], max_batch)


class AotiEngine(EngineBase):
    """An AOTInductor package of the model, run on the CPU or one CUDA GPU.

    Args:
        source: the model (float32, CPU; copied for a build, never modified) with labels and clip spec.
        device: ``cpu`` or a checked CUDA device.
        precision: fp32, fp16 or bf16.
        max_batch: the package takes batches 1..max_batch.
        cache: where packages live (the plan cache).
        kernel: EMIM kernel name or 'auto' (resolved for ``device``).
        threads: ``torch.set_num_threads`` for the CPU (0 = leave PyTorch's default).
        build: build a missing or invalid package (False: only load a valid cached one).

    Raises:
        BackendUnavailableError: int8 / fp8, no C++ compiler for a needed build, a failed export
            or compile, a package that will not load even after a rebuild, or (``build=False``)
            no valid cached package.
        KernelUnavailableError: ``kernel`` cannot run on ``device``.
    """

    def __init__(
        self,
        source: ModelSource,
        device: torch.device,
        precision: str,
        max_batch: int,
        cache: EngineCache,
        kernel: str = "auto",
        threads: int = 0,
        build: bool = True,
    ) -> None:
        spec = _spec_for(source, precision, max_batch)
        self._kernel, why = choose_kernel(kernel, device)
        log.info("aoti: EMIM kernel %s (%s)", self._kernel, why)
        if device.type == "cpu" and threads:
            torch.set_num_threads(threads)
        key = aoti_key(source, spec, precision, self._kernel, device)

        def build_fn() -> tuple[bytes, dict[str, Any]]:
            from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir

            previous_s = _previous_build_s(cache, key)
            if not build:
                raise NotBuiltError(f"no valid cached package {cache.paths(key)[0].name}", previous_s)
            work = cache.root / _INDUCTOR_CACHE
            work.mkdir(mode=0o700, parents=True, exist_ok=True)
            exported = work / f"{key.stem}.exported.pt2"
            with temporary_cache_dir(str(work)):
                built = build_package(source, spec, self._kernel, device, previous_s, exported)
            exported.unlink(missing_ok=True)
            return built

        def load(_: bytes) -> Any:
            return self._load(cache.paths(key)[0], device)

        self._runner, self._path, self._built = load_or_build(cache, key, build_fn, load)
        self.device = device
        self.vmp = source.vmp
        self._source, self._precision, self._spec = source, Precision(precision), spec

    @staticmethod
    def _load(path: Path, device: torch.device) -> Any:
        """The loaded package, or None when AOTInductor refuses it (logged)."""
        start = time.perf_counter()
        try:
            index = -1 if device.type == "cpu" else (device.index or 0)
            runner = torch._inductor.aoti_load_package(str(path), device_index=index)
        except Exception as err:  # a zip or shared-library error: the cache rebuilds it
            log.warning("aoti: loading package %s failed (%s)", path.name, _first_line(err))
            return None
        log.info("aoti: package loaded in %.2f s", time.perf_counter() - start)
        return runner

    @torch.inference_mode()
    def infer(self, clips: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]`` float32 on :attr:`device` of clips ``[B, 3, T, H, W]``."""
        check_clips(clips, self._spec)
        clips = clips.to(self.device, self._spec.dtype).contiguous()
        return self._runner(clips).float()

    def describe(self) -> EngineInfo:
        state = "built now" if self._built else "cached"
        return self._source.info(
            "aoti",
            self._precision.value,
            str(self.device),
            f"{self._kernel} (compiled into the package)",
            f"torch {torch.__version__} AOTInductor, package {self._path} ({state}), batch 1..{self._spec.max_batch}",
        )

    def close(self) -> None:
        self._runner = None


def open_aoti(source: ModelSource, cfg: EngineConfig, step: Candidate, build: bool = True) -> AotiEngine:
    """The ``aoti`` opener of the fallback chain (``build=False``: load a cached package or fail)."""
    device = check_backend(cfg, step)
    cache = EngineCache(cache_dir(cfg))
    return AotiEngine(source, device, step.precision, cfg.max_batch, cache, cfg.kernel, cfg.threads, build)


BUILD_NICE = 10
"""The background build's CPU priority (nice): low, not the lowest. On a box the serving engine keeps busy, SCHED_IDLE
or nice 19 would leave the build almost no CPU time, and the compiled engine would never take over; at nice 10 it
gets about a tenth of a contended core and all of an idle one."""


def yield_cpu(pid: int) -> str:
    """Lower process ``pid`` (and the processes and threads it starts) to :data:`BUILD_NICE`, never raising it; returns
    the priority in words ('nice 10')."""
    nice = max(BUILD_NICE, os.getpriority(os.PRIO_PROCESS, pid))
    os.setpriority(os.PRIO_PROCESS, pid, nice)
    return f"nice {nice}"


@contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while a process starts, which then ignores it from its first instruction on.

    Only in the main thread (where Python sets handlers); elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _build_main(cfg: EngineConfig, step: Candidate, conn: Connection, parent_pid: int) -> None:
    """Body of the build process: its own process group (the compiler included), ends with its parent.

    It compiles in this process alone (one compile worker, one thread): no worker pool to share the
    CPU with the serving engine or to leave semaphores behind when the build is stopped.
    """
    os.setpgid(0, 0)

    def watch_parent() -> None:
        while os.getppid() == parent_pid:
            time.sleep(1.0)
        os.killpg(0, signal.SIGKILL)  # the pipeline died without closing us: take the compilers along

    threading.Thread(target=watch_parent, name="aoti-parent-watch", daemon=True).start()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s [aoti build] %(name)s: %(message)s")
    from emim_stream.engines.backends.model_source import load_source

    torch._inductor.config.compile_threads = 1
    # Spawned, this process would name its semaphores and register them with the pipeline's resource tracker,
    # which warns about those a stopped build leaves (tqdm's lock, made during the compile). It starts no
    # process with multiprocessing, so the fork method's semaphores, unlinked as they are made, serve.
    multiprocessing.set_start_method("fork", force=True)
    cfg = dataclasses.replace(cfg, threads=1)  # not in the package's key: the serving engine sets its own
    try:
        with open_aoti(load_source(cfg), cfg, step):
            pass
    except EmimError as err:
        conn.send(getattr(err, "reason", None) or str(err))
    else:
        conn.send("")
    finally:
        conn.close()


class BackgroundBuild:
    """Builds the package of one chain step in a spawned process, while another engine serves.

    The process is its own process group (so the compiler processes it starts end with it), runs at
    the lowest CPU priority (:func:`yield_cpu`), watches its parent (it kills its group when the
    parent dies without closing it) and reports one line: empty on success, else why the build
    failed. The finished package is then loaded in a thread, so the serving loop never waits for
    the build or the load.

    Args:
        cfg: the engine config.
        step: the aoti step of the fallback chain.
        source: the already loaded model (labels, clip, hash) for opening the finished package.
    """

    def __init__(self, cfg: EngineConfig, step: Candidate, source: ModelSource) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.cfg, self.step, self.source = cfg, step, source
        self._conn, child_conn = ctx.Pipe(duplex=False)
        self._proc = ctx.Process(
            target=_build_main, args=(cfg, step, child_conn, os.getpid()), name="emim-aoti-build", daemon=False
        )
        self.started = time.monotonic()
        with _sigint_ignored():  # kept through exec: a Ctrl-C reaches the pipeline, which ends the build
            self._proc.start()
        self.priority = yield_cpu(self.pid)  # now, while it is one thread: its threads and compilers inherit it
        """How the build yields the CPU, in words ('nice 10')."""
        child_conn.close()
        self._outcome: str | None = None
        self._loader: threading.Thread | None = None
        self._engine: AotiEngine | None = None
        self._load_error = ""

    @property
    def pid(self) -> int:
        """The build process (the leader of its process group)."""
        pid = self._proc.pid
        assert pid is not None  # started in __init__
        return pid

    def done(self) -> bool:
        """Whether the build has finished and its package is loaded, or it failed; never blocks."""
        if self._outcome is None:
            alive = self._proc.is_alive()  # before the poll: a result sent before dying is seen
            try:
                if self._conn.poll():
                    self._outcome = self._conn.recv()
            except EOFError:  # it closed the pipe without a result
                alive = False
            if self._outcome is None and not alive:
                self._proc.join()
                self._outcome = f"the build process exited with code {self._proc.exitcode} without a result"
            if self._outcome == "":
                self._loader = threading.Thread(target=self._load, name="aoti-load", daemon=True)
                self._loader.start()
        if self._outcome is None:
            return False
        return self._loader is None or not self._loader.is_alive()

    def _load(self) -> None:
        try:
            self._engine = open_aoti(self.source, self.cfg, self.step, build=False)
        except EmimError as err:
            self._load_error = getattr(err, "reason", None) or str(err)

    def engine(self) -> AotiEngine:
        """The engine on the package just built (loaded from the cache; never builds here).

        Raises:
            BackendUnavailableError: the build failed, or its package cannot be loaded.
        """
        if not self.done():
            raise RuntimeError("the background build has not finished")
        if self._outcome or self._engine is None:
            raise BackendUnavailableError("aoti", self._outcome or self._load_error or "loading the package failed")
        engine, self._engine = self._engine, None
        return engine

    def close(self) -> None:
        """End the build if it still runs (its whole process group), and reap it; drop an engine not taken."""
        if self._proc.is_alive():
            try:
                os.killpg(self.pid, signal.SIGTERM)
            except ProcessLookupError:  # not yet its own group
                self._proc.terminate()
            self._proc.join(5.0)
            if self._proc.is_alive():
                os.killpg(self.pid, signal.SIGKILL)
                self._proc.join()
        self._conn.close()
        if self._loader is not None:
            self._loader.join()
        if self._engine is not None:
            self._engine.close()
            self._engine = None
