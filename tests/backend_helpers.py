"""Run code under another Keras backend in a subprocess, with TensorFlow made unimportable when it is not TF.

`run_backend(backend, code, *args)` runs `code` (a Python source string; `sys.argv[1:]` are `args`) with
KERAS_BACKEND=`backend`. Under "jax" every `import tensorflow` raises ImportError, so a TensorFlow-only call on
the path under test fails the test instead of quietly loading TensorFlow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]

_BLOCK_TENSORFLOW = """
import sys
class _NoTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            raise ImportError(f"{name} is blocked: this process runs Keras on JAX without TensorFlow")
sys.meta_path.insert(0, _NoTensorFlow())
"""


def backend_env(backend: str, **extra: str) -> dict:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2",
               PYTHONPATH=str(PROJECT_ROOT))
    env.update(extra)
    return env


def run_backend(backend: str, code: str, *args: str, env: dict | None = None, timeout: int = 900,
                check: bool = True) -> subprocess.CompletedProcess:
    prelude = _BLOCK_TENSORFLOW if backend != "tensorflow" else ""
    proc = subprocess.run([sys.executable, "-c", prelude + code, *map(str, args)],
                          env=env or backend_env(backend), cwd=PROJECT_ROOT, capture_output=True, text=True,
                          timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{backend} subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc
