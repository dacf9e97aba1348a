"""The fused exp-sum behind every neuron's logsumexp, in three interchangeable backends.

``expsum`` computes, for each row ``r`` and neuron ``n`` of a chunk,

    S[r, n] = Σ_v exp(a[r,n]·q[r,v] + c[r,n]·P[n,v] + bias[v] − shift[r,n])        (one pass over V)

without materialising ``[rows, n, V]``. ``shift`` is an upper bound of the exponent's maximum, so no term
exceeds 1 and no online max is needed; the caller recomputes the rare pairs whose sum underflows.

Backends (``GATED_LPI_KERNEL`` or :func:`use_kernel`; default ``auto``):

- ``native``: a small C++ kernel (GCC vector extensions, a polynomial ``exp``), built once with the
  system compiler into a private folder of the user cache and loaded only after its owner, mode and
  sha256 are checked (:mod:`gated_lpi_exp.attribution.native_lib`); called through ``ctypes`` from
  ``torch.get_num_threads()`` threads. CPU only. About 3x the exp rate of the inductor kernel below (see ``python -m
  gated_lpi_exp.bench``), because inductor's ``exp`` is SLEEF's 1-ulp version and its sums are cascaded.
- ``compiled``: the same formula through ``torch.compile`` (inductor: C++/OpenMP on CPU, Triton on GPU).
- ``eager``: no fusion; the caller materialises logits in budget-sized chunks (the reference path).

``auto`` takes ``native`` on CPU and ``compiled`` elsewhere. A backend that fails to build or compile is
logged once and the next one down is used.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import Tensor

from gated_lpi_exp.attribution.native_lib import build_or_load, kernel_dir

log = logging.getLogger(__name__)

KERNELS = ("auto", "native", "compiled", "eager")
ENV_VAR = "GATED_LPI_KERNEL"
_ORDER = ("native", "compiled", "eager")

_NATIVE_SOURCE = r"""
#include <stdint.h>
#include <string.h>
#include <math.h>
typedef float vf __attribute__((vector_size(32)));
typedef int32_t vi __attribute__((vector_size(32)));
static inline vf load(const float* p) { vf v; memcpy(&v, p, sizeof v); return v; }
static inline vf splat(float x) { return vf{x, x, x, x, x, x, x, x}; }
// exp(x) for x >= -87.3 (clamped; smaller terms are below 1e-37): 2^n p(r) with r = x - n ln2 in
// [-ln2/2, ln2/2], p a degree-5 near-minimax polynomial (relative error 2e-7 in float32), and 2^n added to
// p's exponent bits. Fewer multiplies than Cephes' expf or SLEEF's: about 1.3x the rate on AVX2.
static inline vf vexp(vf x) {
  x = x < splat(-87.3f) ? splat(-87.3f) : x;
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to the nearest integer
  vf t = x * splat(1.44269504088896341f) + magic;
  vf n = t - magic;
  vi ni = (vi)t - (vi)magic;
  vf r = x - n * splat(0.693147180559945f);
  vf p = splat(8.297642693e-03f);
  p = p * r + splat(4.191536456e-02f);
  p = p * r + splat(1.666757464e-01f);
  p = p * r + splat(4.999889433e-01f);
  p = p * r + splat(9.999997020e-01f);
  p = p * r + splat(1.000000119e+00f);
  return (vf)((vi)p + (ni << 23));
}
static inline float hsum(vf v) { float s = 0.f; for (int i = 0; i < 8; ++i) s += v[i]; return s; }
// out[n*rows + r] for n in [n0, n1), r in [r0, r1); a may be NULL (= 1), bias may be NULL (= 0).
extern "C" void expsum(const float* q, const float* p, const float* a, const float* c, const float* shift,
                       const float* bias, float* out, int64_t n0, int64_t n1, int64_t r0, int64_t r1,
                       int64_t rows, int64_t vocab) {
  const int64_t block = 2048;  // terms per lane group before the double accumulator
  for (int64_t n = n0; n < n1; ++n) {
    const float* pn = p + n * vocab;
    for (int64_t r = r0; r < r1; ++r) {
      const int64_t k = n * rows + r;
      const float av = a ? a[k] : 1.0f, cv = c[k], sv = shift[k];
      const vf va = splat(av), vc = splat(cv), vs = splat(-sv);
      const float* qr = q + r * vocab;
      double total = 0.0;
      int64_t v = 0;
      while (v + 32 <= vocab) {
        const int64_t stop = v + block < vocab ? v + block : vocab;
        vf s0 = splat(0.f), s1 = s0, s2 = s0, s3 = s0;
        for (; v + 32 <= stop; v += 32) {
          vf x0 = va * load(qr + v) + (vc * load(pn + v) + vs);
          vf x1 = va * load(qr + v + 8) + (vc * load(pn + v + 8) + vs);
          vf x2 = va * load(qr + v + 16) + (vc * load(pn + v + 16) + vs);
          vf x3 = va * load(qr + v + 24) + (vc * load(pn + v + 24) + vs);
          if (bias) {
            x0 += load(bias + v); x1 += load(bias + v + 8);
            x2 += load(bias + v + 16); x3 += load(bias + v + 24);
          }
          s0 += vexp(x0); s1 += vexp(x1); s2 += vexp(x2); s3 += vexp(x3);
        }
        total += (double)hsum((s0 + s1) + (s2 + s3));
      }
      for (; v < vocab; ++v) total += (double)expf(av * qr[v] + cv * pn[v] + (bias ? bias[v] : 0.f) - sv);
      out[k] = (float)total;
    }
  }
}
"""
_NATIVE_FLAGS = ("-O3", "-fPIC", "-shared", "-ffp-contract=fast", "-fno-math-errno")

# Backend callables are kept under "<name>:<device type>" keys (False: failed to build here).
_state: dict = {"override": None, "warned": set(), "pool": None}
_lock = threading.Lock()


@contextmanager
def use_kernel(name: str) -> Iterator[None]:
    """Force a backend (``auto``, ``native``, ``compiled``, ``eager``) inside the block (tests, benchmarks)."""
    if name not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {name!r}")
    previous, _state["override"] = _state["override"], name
    try:
        yield
    finally:
        _state["override"] = previous


def requested_kernel() -> str:
    """The backend asked for: :func:`use_kernel`, else ``$GATED_LPI_KERNEL``, else ``auto``."""
    name = _state["override"] or os.environ.get(ENV_VAR, "auto").strip().lower() or "auto"
    if name not in KERNELS:
        raise ValueError(f"{ENV_VAR}={name!r} is not one of {KERNELS}")
    return name


def resolve_kernel(device: torch.device | str = "cpu") -> str:
    """The backend that will run on ``device``: the requested one, or the next that works (logged once)."""
    device = torch.device(device)
    name = requested_kernel()
    candidates = _ORDER if name == "auto" else _ORDER[_ORDER.index(name) :]
    for candidate in candidates:
        if candidate == "native" and device.type != "cpu":
            continue
        if candidate == "eager" or _load(candidate, device.type) is not None:
            if name not in ("auto", candidate):
                _warn_once(f"{name}->{candidate}", f"kernel {name!r} unavailable; using {candidate!r}")
            return candidate
    return "eager"


def expsum(
    q: Tensor, proj: Tensor, a: Tensor, c: Tensor, shift: Tensor, bias: Tensor | None, kernel: str
) -> Tensor:
    """``S [rows, n]`` of the module docstring with a fused backend (``native`` or ``compiled``).

    Args:
        q: ``[rows, V]`` float32.
        proj: ``[n, V]`` float32 shared projections.
        a: ``[rows, n]`` multiplier of ``q``.
        c: ``[rows, n]`` multiplier of ``proj``.
        shift: ``[rows, n]`` upper bound of each exponent's maximum.
        bias: ``[V]`` or None.
        kernel: ``native`` or ``compiled`` (see :func:`resolve_kernel`).

    Returns:
        ``[rows, n]`` sums, each in ``(0, V]`` unless the terms underflow (then tiny or 0).
    """
    # [n, rows] layout: each thread keeps one projection row in cache while it sweeps the rows.
    a_t, c_t, s_t = (x.T.float().contiguous() for x in (a, c, shift))  # [n, rows]
    lib = _load("native", "cpu") if kernel == "native" and q.device.type == "cpu" else None
    if lib is not None:
        q, proj = q.float().contiguous(), proj.float().contiguous()
        return _native_expsum(lib, q, proj, a_t, c_t, s_t, bias.float() if bias is not None else None).T
    compiled = _load("compiled", q.device.type)
    if compiled is not None:
        try:
            return compiled(q, proj, a_t, c_t, s_t, bias).T
        except Exception as exc:  # noqa: BLE001 - a recompilation for new shapes failed: go eager from now on
            _state[f"compiled:{q.device.type}"] = False
            _warn_once("compiled-call", f"compiled kernel failed ({type(exc).__name__}); using eager")
    # Eager, in slices whose [slice, rows, V] temporaries stay about the size of ``proj``.
    step = max(1, proj.shape[0] // (2 * q.shape[0]))
    parts = [
        _compiled_formula(
            q, proj[lo : lo + step], a_t[lo : lo + step], c_t[lo : lo + step], s_t[lo : lo + step], bias
        )
        for lo in range(0, proj.shape[0], step)
    ]
    return torch.cat(parts).T  # [rows, n]


def _native_expsum(
    lib, q: Tensor, proj: Tensor, a: Tensor, c: Tensor, shift: Tensor, bias: Tensor | None
) -> Tensor:
    n, rows, vocab = proj.shape[0], q.shape[0], q.shape[1]
    out = torch.empty(n, rows, dtype=torch.float32)  # [n, rows]
    bias = bias.contiguous() if bias is not None else None
    ptrs = [t.data_ptr() if t is not None else None for t in (q, proj, a, c, shift, bias, out)]
    threads = max(1, torch.get_num_threads())
    if n >= threads:  # split the neurons; rows otherwise (a handful of neurons, many rows)
        cuts = [(n * i // (2 * threads), n * (i + 1) // (2 * threads), 0, rows) for i in range(2 * threads)]
    else:
        cuts = [(0, n, rows * i // threads, rows * (i + 1) // threads) for i in range(threads)]
    calls = [(*ptrs, *cut, rows, vocab) for cut in cuts if cut[0] < cut[1] and cut[2] < cut[3]]
    if threads == 1 or len(calls) == 1:
        for args in calls:
            lib.expsum(*args)
        return out
    pool = _pool(threads)  # ctypes drops the GIL for the call, so the threads run the kernel in parallel
    for future in [pool.submit(lib.expsum, *args) for args in calls]:
        future.result()
    return out


def _compiled_formula(
    q: Tensor, proj: Tensor, a: Tensor, c: Tensor, shift: Tensor, bias: Tensor | None
) -> Tensor:
    x = a[:, :, None] * q[None, :, :] + (c[:, :, None] * proj[:, None, :] - shift[:, :, None])  # [n, rows, V]
    if bias is not None:
        x = x + bias
    # [n, rows]: inductor fuses this into one reduction over V; nothing [n, rows, V] is stored.
    return x.exp().sum(-1)


def _load(name: str, device: str = "cpu"):
    """The backend's callable for a device type, built on first use; None when it cannot be (logged once)."""
    key = f"{name}:{device}"
    with _lock:
        if _state.get(key) is None:
            try:
                _state[key] = _build_native() if name == "native" else _build_compiled(device)
            except Exception as exc:  # noqa: BLE001 - any build failure means "use the next backend"
                _state[key] = False
                _warn_once(key, f"{name} kernel unavailable ({type(exc).__name__}: {str(exc)[:300]})")
        return _state[key] or None


def _build_compiled(device: str) -> Callable[..., Tensor]:
    fn: Callable[..., Tensor] = torch.compile(_compiled_formula, dynamic=True)
    gen = torch.Generator().manual_seed(0)
    q, proj = torch.randn(3, 37, generator=gen), torch.randn(5, 37, generator=gen)  # sizes > 1: stays dynamic
    a, c, shift = torch.rand(5, 3, generator=gen), torch.randn(5, 3, generator=gen), torch.full((5, 3), 40.0)
    args = [t.to(device) for t in (q, proj, a, c, shift)]
    if not torch.allclose(fn(*args, None).cpu(), _compiled_formula(q, proj, a, c, shift, None), rtol=1e-5):
        raise RuntimeError("compiled exp-sum disagrees with its eager formula")
    return fn


def native_candidates() -> list[tuple[tuple[str, ...], str]]:
    """``(flags, file stem)`` of each native build tried, best first (the stem names the library file)."""
    cxx = _compiler()
    fingerprint = _cpu_fingerprint()
    out = []
    for arch in (("-march=native",), ()):
        flags = (*_NATIVE_FLAGS, *arch)
        key = hashlib.sha256("\0".join((_NATIVE_SOURCE, cxx or "", *flags, fingerprint)).encode()).hexdigest()
        out.append((flags, f"expsum-{key[:16]}"))
    return out


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _build_native():
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (set CXX or install g++)")
    folder = kernel_dir()
    last_error = None
    for flags, stem in native_candidates():
        try:
            lib = build_or_load(folder, stem, _NATIVE_SOURCE, [cxx, *flags, "{src}", "-o", "{out}"])
            lib.expsum.restype = None
            lib.expsum.argtypes = [ctypes.c_void_p] * 7 + [ctypes.c_int64] * 6
            _check_native(lib)
            return lib
        except (OSError, RuntimeError, subprocess.SubprocessError) as exc:
            last_error = exc
    raise RuntimeError(str(last_error))


def _check_native(lib) -> None:
    gen = torch.Generator().manual_seed(0)
    q, proj = torch.randn(3, 77, generator=gen), torch.randn(4, 77, generator=gen)
    a, c = torch.rand(4, 3, generator=gen) + 0.5, torch.randn(4, 3, generator=gen)
    shift = torch.full((4, 3), 6.0)
    got = _native_expsum(lib, q, proj, a, c, shift, None)
    want = _compiled_formula(q.double(), proj.double(), a.double(), c.double(), shift.double(), None)
    if not torch.allclose(got.double(), want, rtol=1e-5, atol=0):
        raise RuntimeError("native exp-sum disagrees with its reference formula")


def _cpu_fingerprint() -> str:
    """The CPU model and flags: a ``-march=native`` build is only reused on the same kind of CPU."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))]
        return platform.machine() + "\n" + "\n".join(sorted(set(lines)))
    except OSError:
        return platform.machine() + platform.processor()


def _pool(threads: int) -> ThreadPoolExecutor:
    pool = _state["pool"]
    if pool is None or pool._max_workers != threads:
        if pool is not None:
            pool.shutdown(wait=False)
        pool = _state["pool"] = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gated-lpi-expsum")
    return pool


def _warn_once(key: str, message: str) -> None:
    if key not in _state["warned"]:
        _state["warned"].add(key)
        log.warning(message)
