"""Environment report: what this box has, and which backend and kernel a config would get, and why.

Probes are cheap and load no model: imports (guarded), ``torch.cuda`` queries, ONNX Runtime's
provider list, a TensorRT ``Builder`` where there is a GPU, and the C++ compiler AOTInductor uses.
The selection section walks :func:`emim_stream.engines.backends.select.fallback_chain` with each backend's own
checks (:func:`emim_stream.engines.backends.candidate.check_backend`, the aoti compiler search), without loading
a model.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from emim_stream.engines.backends.base import Backend, EngineConfig
from emim_stream.engines.backends.candidate import ONNX_BACKENDS, Candidate, check_backend
from emim_stream.engines.backends.engine_cache import EngineCache, default_cache_dir
from emim_stream.engines.backends.ort_engine import import_onnxruntime
from emim_stream.engines.backends.select import fallback_chain
from emim_stream.engines.errors import BackendUnavailableError, KernelUnavailableError
from emim_stream.engines.layers.neighborhood import KERNELS, choose_kernel

__all__ = ["Section", "environment", "natten_role", "probe", "selection"]

_GRAPH_KERNEL = "ONNX graph: the reference kernel lowered to standard ops"


@dataclass(frozen=True, slots=True)
class Section:
    """A titled list of (item, value) rows."""

    title: str
    rows: tuple[tuple[str, str], ...]


def _dist_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def natten_role(version: str) -> str:
    """What an installed NATTEN version can do for the EMIM op (docs/model.md#natten)."""
    major, minor = (int(x) for x in version.split(".")[:2])
    if (major, minor) >= (0, 20):
        return (
            "fused na2d only (no relative positional bias, no logits): cannot compute EMIM, whose motion "
            "branch needs the logits; used by the tests as an independent check of the context branch (rpb = 0)"
        )
    return (
        "unfused na2d_qk(rpb=) / na2d_av return the logits EMIM needs, but 0.17.x does not import with "
        "current PyTorch; not wired as a kernel"
    )


def _tensorrt_rows() -> list[tuple[str, str]]:
    from emim_stream.engines.backends.trt_engine import import_tensorrt

    try:
        trt = import_tensorrt()
    except BackendUnavailableError as err:
        return [("tensorrt", err.reason)]
    rows = [("tensorrt", trt.__version__)]
    if torch.cuda.is_available():
        try:
            trt.Builder(trt.Logger(trt.Logger.ERROR))
            rows.append(("tensorrt builder", "can be created"))
        except TypeError as err:
            rows.append(("tensorrt builder", f"cannot be created ({err})"))
    else:
        rows.append(("tensorrt builder", "not tried (no GPU)"))
    return rows


def _aoti_rows() -> list[tuple[str, str]]:
    from emim_stream.engines.backends.aoti_engine import cpp_compiler

    try:
        compiler = cpp_compiler()
    except BackendUnavailableError as err:
        return [("aoti compiler", f"none: {err.reason} (cached packages still load)")]
    where = shutil.which(compiler) or compiler
    return [("aoti compiler", f"{where} (torch {torch.__version__} AOTInductor builds packages with it)")]


def environment(cache_dir: Path | None = None) -> list[Section]:
    """What this box has: CPU, GPU, CUDA, TensorRT, AOTInductor, ONNX Runtime, NATTEN, kernels, plan cache."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    host = [
        ("python", f"{sys.version.split()[0]} on {platform.platform()}"),
        ("cpu", f"{_cpu_model()}; {os.cpu_count()} logical cores, {usable} usable by this process"),
    ]
    torch_rows = [
        ("torch", f"{torch.__version__} ({'CUDA ' + torch.version.cuda if torch.version.cuda else 'CPU-only build'})"),
        ("torch threads", str(torch.get_num_threads())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(i)
            torch_rows.append(
                (
                    f"cuda:{i}",
                    f"{props.name}, compute capability {props.major}.{props.minor}, "
                    f"{props.total_memory / 2**30:.0f} GiB",
                )
            )
    else:
        torch_rows.append(("gpu", "none (torch.cuda.is_available() is False)"))
    try:
        ort = import_onnxruntime()
        ort_rows = [("onnxruntime", f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}")]
    except BackendUnavailableError as err:
        ort_rows = [("onnxruntime", err.reason)]
    gpu_stack = [
        *_tensorrt_rows(),
        ("torch-tensorrt", _dist_version("torch-tensorrt")),
        ("nvidia-modelopt", _dist_version("nvidia-modelopt")),
        ("triton", _dist_version("triton")),
    ]
    onnx_rows = [("onnx", _dist_version("onnx")), ("onnxscript", _dist_version("onnxscript")), *ort_rows]
    natten = _dist_version("natten")
    natten_text = natten if natten == "not installed" else f"{natten}: {natten_role(natten)}"
    here = "cuda" if torch.cuda.is_available() else "cpu"
    auto, why = choose_kernel("auto", here)
    kernels = [
        ("emim kernels", ", ".join(sorted(KERNELS))),
        ("kernel 'auto'", f"{auto} on {here} ({why}); the ONNX export always uses reference"),
        ("natten", natten_text),
    ]
    root = cache_dir or default_cache_dir()
    cached = EngineCache(root)
    packages = cached.cached("*.pt2")
    cache = [
        ("cache dir", str(root)),
        ("tensorrt plans", str(len(cached.cached("*.plan")))),
        ("aoti packages", f"{len(packages)}" + "".join(f"\n      {p.name}" for p in packages)),
    ]
    return [
        Section("host", tuple(host)),
        Section("torch / GPU", tuple(torch_rows)),
        Section("TensorRT and friends", tuple(gpu_stack)),
        Section("AOTInductor", tuple(_aoti_rows())),
        Section("ONNX", tuple(onnx_rows)),
        Section("EMIM op", tuple(kernels)),
        Section("cache", tuple(cache)),
    ]


def probe(cfg: EngineConfig, step: Candidate) -> str | None:
    """Why ``step`` could not open here (the checks its backend makes first), or None if it should."""
    try:
        check_backend(cfg, step)
        if step.backend == Backend.AOTI:
            from emim_stream.engines.backends.aoti_engine import cpp_compiler

            cpp_compiler()  # to build the package (a cached one loads without; telling needs the model)
    except BackendUnavailableError as err:
        return err.reason
    if cfg.onnx is not None and step.backend in ONNX_BACKENDS and not Path(cfg.onnx).is_file():
        return f"engine.onnx '{cfg.onnx}' does not exist"
    return None


def selection(cfg: EngineConfig) -> Section:
    """The fallback chain for ``cfg`` with each step's verdict; the first available one is chosen."""
    rows = []
    chosen = False
    for step in fallback_chain(cfg):
        reason = probe(cfg, step)
        note = f"; {step.precision} because {step.note}" if step.note else ""
        if reason is not None:
            rows.append((str(step), f"unavailable: {reason}"))
        elif not chosen:
            chosen = True
            rows.append((str(step), f"CHOSEN{note}"))
            rows.append(("  kernel", _kernel_for(cfg, step)))
        else:
            rows.append((str(step), f"available (fallback){note}"))
    if not chosen:
        rows.append(("result", "no backend can run with this config"))
    title = f"selection for backend={cfg.backend} device={cfg.device} precision={cfg.precision}"
    return Section(title, tuple(rows))


def _kernel_for(cfg: EngineConfig, step: Candidate) -> str:
    if step.backend in ONNX_BACKENDS:
        return _GRAPH_KERNEL
    try:
        kernel, why = choose_kernel(cfg.kernel, "cpu" if step.device == "cpu" else "cuda")
    except KernelUnavailableError as err:
        return f"error: {err}"
    if step.backend == Backend.AOTI:
        return f"{kernel} compiled into the aoti package ({why})"
    compiled = " under torch.compile" if cfg.compile else ""
    return f"{kernel}{compiled} ({why})"
