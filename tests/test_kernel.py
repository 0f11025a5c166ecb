"""The fused projected sign-gradient update: Triton (compiled on a GPU, interpreted on CPU) vs PyTorch vs float64."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from facelock_pl.kernels import pgd_step_, pgd_step_reference_, triton_available

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed")

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
# Where the Triton kernel runs: compiled on a GPU, else under the interpreter (tests/conftest.py) on CPU tensors.
DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")


@pytest.fixture
def force_triton(monkeypatch):
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("needs TRITON_INTERPRET=1 set before triton is imported")
    monkeypatch.setenv("FACELOCK_FORCE_TRITON", "1")


def make_inputs(shape, g_dtype, x_dtype, channels_last=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.rand(shape, generator=gen) * 2 - 1).to(x_dtype)
    x_adv = (x.float() + (torch.rand(shape, generator=gen) * 2 - 1) * 0.05).clamp(-1, 1)
    g = torch.randn(shape, generator=gen).to(g_dtype)
    b = shape[0]
    alpha = torch.rand(b, generator=gen) * 0.02 + 0.001
    eps = torch.rand(b, generator=gen) * 0.03 + 0.01
    if channels_last:
        x, x_adv, g = (t.contiguous(memory_format=torch.channels_last) for t in (x, x_adv, g))
    return tuple(t.to(DEVICE) for t in (x_adv, g, x, alpha, eps))


def float64_reference(x_adv, g, x, alpha, eps, lo=-1.0, hi=1.0, active=None):
    view = (-1,) + (1,) * (x_adv.dim() - 1)
    x64 = x.double()
    out = x_adv.double() + alpha.double().view(view) * torch.sign(g.double())
    out = torch.minimum(torch.maximum(out, x64 - eps.double().view(view)), x64 + eps.double().view(view)).clamp(lo, hi)
    if active is not None:
        out = torch.where(active.view(view), out, x_adv.double())
    return out


@pytest.mark.parametrize("g_dtype", DTYPES)
@pytest.mark.parametrize("x_dtype", DTYPES)
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 37, 29), (17, 3, 11, 13)])
def test_triton_matches_torch_and_float64(force_triton, g_dtype, x_dtype, channels_last, shape):
    x_adv, g, x, alpha, eps = make_inputs(shape, g_dtype, x_dtype, channels_last)
    assert (g > 0).any() and (g < 0).any()
    expected = float64_reference(x_adv, g, x, alpha, eps)
    triton_out = pgd_step_(x_adv.clone(), g, x, alpha, eps)
    torch_out = pgd_step_reference_(x_adv.clone(), g, x, alpha, eps)
    # fp32 arithmetic vs float64: a few fp32 ulps; the interpreter truncates bf16 -> one bf16 ulp near 1.
    tol = 1e-6 if x_dtype == torch.float32 else 2 ** -7
    torch.testing.assert_close(triton_out.double(), expected, atol=tol, rtol=0)
    torch.testing.assert_close(torch_out.double(), expected, atol=tol, rtol=0)
    torch.testing.assert_close(triton_out, torch_out, atol=tol, rtol=0)
    assert triton_out.stride() == x_adv.stride()


def test_mixed_layouts_are_handled(force_triton):
    x_adv, g, x, alpha, eps = make_inputs((3, 3, 9, 7), torch.float32, torch.float32)
    g_cl = g.contiguous(memory_format=torch.channels_last)
    out = pgd_step_(x_adv.clone(), g_cl, x, alpha, eps)
    torch.testing.assert_close(out.double(), float64_reference(x_adv, g, x, alpha, eps), atol=1e-6, rtol=0)


def test_triton_on_cpu_tensors_without_the_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("FACELOCK_FORCE_TRITON", "1")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    x = torch.zeros(2, 3, 4, 4)
    with pytest.raises(ValueError, match="runs on CUDA tensors, got cpu"):
        pgd_step_(x.clone(), torch.ones_like(x), x, 0.01, 0.03)


@pytest.mark.parametrize("path", ["triton", "torch"])
def test_invariants(monkeypatch, path):
    if path == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1" and not torch.cuda.is_available():
            pytest.skip("needs TRITON_INTERPRET=1")
        monkeypatch.setenv("FACELOCK_FORCE_TRITON", "1")
    x_adv, g, x, alpha, eps = make_inputs((5, 3, 16, 15), torch.float32, torch.float32, seed=3)
    x = x * 0.85  # clean images inside [lo, hi], so the ball and the range can both hold
    alpha = alpha * 10  # large steps: the projection must bind
    active = torch.tensor([True, False, True, True, False], device=DEVICE)
    x_adv[0, 0, 0, :4] = float("nan")  # a poisoned active sample
    before = x_adv.clone()
    out = pgd_step_(x_adv, g, x, alpha, eps, lo=-0.9, hi=0.9, active=active)
    assert out is x_adv
    assert not out[active].isnan().any()
    view = (-1, 1, 1, 1)
    assert ((out - x).abs() <= eps.view(view) + 1e-6)[active].all()
    assert ((out >= -0.9) & (out <= 0.9))[active].all()
    assert torch.equal(out[~active], before[~active])  # bit-for-bit
    assert (out[active] != before[active]).float().mean() > 0.5

    x_adv2 = before.clone().nan_to_num_(0.0)
    still = x_adv2.clone()
    pgd_step_(x_adv2, torch.zeros_like(g), x_adv2.clone(), alpha, 0.5)
    assert torch.equal(x_adv2, still)  # g = 0 leaves x_adv unchanged (inside the ball and the range)


def test_scalar_and_bad_arguments():
    x_adv, g, x, *_ = make_inputs((2, 3, 4, 4), torch.float32, torch.float32)
    a = pgd_step_(x_adv.clone(), g, x, 0.01, 0.03)
    b = pgd_step_(x_adv.clone(), g, x, torch.tensor([0.01, 0.01]), torch.tensor([0.03, 0.03]))
    assert torch.equal(a, b)
    with pytest.raises(TypeError, match="float32"):
        pgd_step_(x_adv.half(), g, x, 0.01, 0.03)
    with pytest.raises(ValueError, match="shape"):
        pgd_step_(x_adv, g[:1], x, 0.01, 0.03)
    with pytest.raises(ValueError, match="step_size"):
        pgd_step_(x_adv, g, x, torch.ones(3), 0.03)


def test_importing_the_checkout_as_top_level_kernels_leaves_the_op_intact():
    """From a checkout the root is on sys.path, and transformers imports the PyPI `kernels` package (or probes
    for it), which finds this folder as `kernels`; that must not re-register the op (it broke every later call)."""
    root = Path(__file__).resolve().parents[1]
    code = f"""
import sys, torch
import facelock_pl.kernels as ours
sys.path.insert(0, {str(root)!r})
import kernels
assert not hasattr(kernels, "pgd_step_") and "kernels.pgd_step" not in sys.modules
x = torch.zeros(2, 3, 4, 4); x_adv = x.clone()
ours.pgd_step_(x_adv, torch.ones_like(x), x, 0.01, 0.03)
assert torch.equal(x_adv, torch.full_like(x, 0.01)), x_adv
print("op intact")
"""
    done = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "op intact" in done.stdout, done.stderr[-3000:]


def test_the_pypi_kernels_package_is_not_shadowed_by_the_checkout(tmp_path):
    """transformers >= 5.25 depends on Hugging Face's `kernels` and runs `from kernels import CUDAProperties, ...`;
    from the checkout's root (first on sys.path) the import must reach that package, not this folder."""
    root = Path(__file__).resolve().parents[1]
    installed = tmp_path / "site" / "kernels"
    (installed / "layer").mkdir(parents=True)
    (installed / "__init__.py").write_text("from .layer import CUDAProperties\n")
    (installed / "layer" / "__init__.py").write_text("CUDAProperties = 'the PyPI package'\n")
    code = "import kernels; from kernels import CUDAProperties; print(CUDAProperties, kernels.__file__)"
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}  # after the root, as site-packages is
    done = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == ["the", "PyPI", "package", str(installed / "__init__.py")]
    alone = subprocess.run([sys.executable, "-c", "import kernels; print(sorted(vars(kernels)).count('pgd_step_'))"],
                           cwd=root, capture_output=True, text=True, timeout=60)  # ours never runs as `kernels`
    assert alone.returncode == 0 and alone.stdout.strip() == "0", alone.stderr[-3000:]


def test_opcheck_and_compile(force_triton):
    x_adv, g, x, alpha, eps = make_inputs((2, 3, 8, 8), torch.float32, torch.bfloat16)
    torch.library.opcheck(torch.ops.facelock_pl.pgd_step_.default, (x_adv.clone(), g, x, alpha, eps, -1.0, 1.0, None))

    def step(x_adv, g, x, alpha, eps):
        pgd_step_(x_adv, g * 2.0, x, alpha, eps)
        return x_adv * 1.0

    eager = step(x_adv.clone(), g, x, alpha, eps)
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")(x_adv.clone(), g, x, alpha, eps)
    torch.testing.assert_close(compiled, eager)
