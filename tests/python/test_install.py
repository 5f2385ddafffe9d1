"""`cmake --install build --prefix P` gives a relocatable tree: installed to a temporary prefix, then moved, P/bin/trex
exports a checkpoint with a clean environment (no LD_LIBRARY_PATH, PATH without .venv, run outside the checkout) and
loads ONNX Runtime from P/lib, nothing from the checkout or .venv; the TorchScript and SentencePiece plugins are found
in P/lib/trex; and
examples/consumer configures and builds against the moved prefix with find_package(trex), and runs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

import fixtures as fx

BUILD = fx.REPO / "build"
CLEAN_PATH = "/usr/local/bin:/usr/bin:/bin"


def run(cmd, **kw):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=240, **kw)
    assert r.returncode == 0, f"{cmd}: exit {r.returncode}\nstdout:\n{r.stdout[-3000:]}\nstderr:\n{r.stderr[-3000:]}"
    return r


def clean_env(home: Path, **extra) -> dict:
    return {"PATH": CLEAN_PATH, "HOME": str(home), "LANG": "C.UTF-8", **extra}


def loaded_libraries(ld_debug_output: str) -> list[str]:
    """Paths of the shared objects the dynamic loader opened ("calling init: PATH" lines of LD_DEBUG=libs)."""
    return [line.split("calling init:", 1)[1].strip() for line in ld_debug_output.splitlines()
            if "calling init:" in line]


@pytest.fixture(scope="module")
def prefix(tmp_path_factory):
    if not (BUILD / "build.ninja").is_file():
        pytest.fail("build/ is not configured (scripts/setup)")
    run(["ninja", "-C", BUILD, "trex"])  # install needs an up-to-date build
    tmp = tmp_path_factory.mktemp("install")
    first = tmp / "first"
    run(["cmake", "--install", BUILD, "--prefix", first])
    moved = tmp / "elsewhere" / "trex-prefix"
    moved.parent.mkdir()
    shutil.move(first, moved)  # relocation: nothing may point at the install prefix
    return moved


def forbidden_roots() -> list[str]:
    roots = {str(fx.REPO), str(BUILD.resolve())}
    for p in (fx.REPO / ".venv", fx.REPO / "third_party"):
        if p.exists():
            roots.add(str(p.resolve()))
    return sorted(roots)


def test_installed_tree(prefix):
    for rel in ["bin/trex", "lib/libonnxruntime.so.1", "lib/libonnxruntime.so", "lib/libtrex.a",
                "lib/libtrex_onnx_proto.a", "lib/cmake/trex/trexConfig.cmake", "lib/cmake/trex/trexConfigVersion.cmake",
                "lib/cmake/trex/trexTargets.cmake", "include/trex/export/export.h", "include/trex/onnx/onnx.pb.h",
                "include/onnxruntime/onnxruntime_cxx_api.h"]:
        assert (prefix / rel).exists(), rel
    assert not (prefix / "include" / "trex" / "cli").exists()
    # Headers are installed by a recursive glob: every library header of src/ is there.
    for h in (fx.REPO / "src").rglob("*.h"):
        rel = h.relative_to(fx.REPO / "src")
        if rel.parts[0] != "cli":
            assert (prefix / "include" / "trex" / rel).is_file(), rel
    dyn = run(["readelf", "-d", prefix / "bin" / "trex"]).stdout
    assert "[$ORIGIN/../lib]" in dyn, dyn


def test_relocated_trex_exports_with_a_clean_environment(prefix, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint("bert", "text-classification"), ckpt)
    out = tmp_path / "out"
    env = clean_env(tmp_path, LD_DEBUG="libs")
    r = run([prefix / "bin" / "trex", "export", "--model", ckpt, "--layout", "optimum", out], env=env, cwd=tmp_path)
    assert (out / "model.onnx").is_file() and (out / "config.json").is_file()
    assert "load check: ok" in r.stdout
    libs = loaded_libraries(r.stderr)
    ort = [p for p in libs if "libonnxruntime" in p]
    assert ort and all(Path(p).resolve().parent == (prefix / "lib").resolve() for p in ort), ort
    for p in libs:
        real = str(Path(p).resolve())
        assert not any(real.startswith(root + "/") for root in forbidden_roots()), f"loaded from the checkout: {p}"
    ldd = run(["ldd", prefix / "bin" / "trex"], env=clean_env(tmp_path)).stdout
    line = next(l for l in ldd.splitlines() if "libonnxruntime" in l)
    resolved = Path(line.split("=>", 1)[1].split("(")[0].strip()).resolve()
    assert resolved == (prefix / "lib" / "libonnxruntime.so.1").resolve(), line


def test_relocated_trex_finds_its_torchscript_plugin(prefix, tmp_path):
    plugin = prefix / "lib" / "trex" / "libtrex_torchscript_plugin.so"
    if not plugin.is_file():
        pytest.skip("this build has no LibTorch (TREX_WITH_TORCH off): no plugin to install")
    ckpt = tmp_path / "ckpt"
    shutil.copytree(fx.checkpoint("bert"), ckpt)
    r = run([prefix / "bin" / "trex", "export", "--model", ckpt, tmp_path / "m.pt"],
            env=clean_env(tmp_path, LD_DEBUG="libs"), cwd=tmp_path)
    assert (tmp_path / "m.pt").is_file()
    libs = [str(Path(p).resolve()) for p in loaded_libraries(r.stderr)]
    assert str(plugin.resolve()) in libs, "the plugin was not loaded from the installed tree"


def test_relocated_trex_finds_its_sentencepiece_plugin(prefix, tmp_path):
    import tokenizer_cases as tc
    plugin = prefix / "lib" / "trex" / "libtrex_spm_plugin.so"
    assert plugin.is_file()
    folder = tmp_path / "t5"
    folder.mkdir()
    shutil.copy(tc.spm_model(), folder / "spiece.model")
    r = subprocess.run([str(prefix / "bin" / "trex"), "tokenize", str(folder)], input="hello world\n",
                       capture_output=True, text=True, timeout=60, env=clean_env(tmp_path, LD_DEBUG="libs"),
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    ids = json.loads(r.stdout)
    assert len(ids) > 2 and ids[-1] == 1, ids  # </s> (id 1) appended
    libs = [str(Path(p).resolve()) for p in loaded_libraries(r.stderr)]
    assert str(plugin.resolve()) in libs, "the plugin was not loaded from the installed tree"


def test_consumer_example_builds_against_the_relocated_prefix(prefix, tmp_path):
    build = tmp_path / "consumer-build"
    env = {**clean_env(tmp_path), "CMAKE_PREFIX_PATH": str(prefix)}
    run(["cmake", "-S", fx.REPO / "examples" / "consumer", "-B", build, "-G", "Ninja", "-DCMAKE_BUILD_TYPE=Release"],
        env=env)
    run(["ninja", "-C", build], env=env)
    out = tmp_path / "out"
    r = run([build / "trex_consumer", fx.checkpoint("bert"), out], env=clean_env(tmp_path, LD_DEBUG="libs"),
            cwd=tmp_path)
    assert "load check: last_hidden_state" in r.stdout, r.stdout
    assert (out / "model.onnx").is_file() and (out / "config.json").is_file()
    ort = [p for p in loaded_libraries(r.stderr) if "libonnxruntime" in p]
    assert ort and all(Path(p).resolve().parent == (prefix / "lib").resolve() for p in ort), ort
