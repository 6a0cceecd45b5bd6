"""Airflow settings of `make airflow` / `make run` (tl_tasks.airflow_local.env)."""
from __future__ import annotations

import stat

from tl_tasks.airflow_local.env import airflow_env


def test_every_component_gets_one_jwt_secret_kept_in_the_airflow_home(tmp_path, monkeypatch):
    # The API server signs the task processes' tokens: a secret drawn per process fails every task.
    monkeypatch.setenv("TL_AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.delenv("AIRFLOW__API_AUTH__JWT_SECRET", raising=False)
    first = airflow_env()["AIRFLOW__API_AUTH__JWT_SECRET"]
    assert len(first) >= 64 and airflow_env()["AIRFLOW__API_AUTH__JWT_SECRET"] == first
    kept = tmp_path / "airflow_home" / "jwt_secret"
    assert kept.read_text() == first
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600
    monkeypatch.setenv("TL_AIRFLOW_HOME", str(tmp_path / "other_home"))  # another home: its own secret
    assert airflow_env()["AIRFLOW__API_AUTH__JWT_SECRET"] != first


def test_a_jwt_secret_from_the_environment_wins(tmp_path, monkeypatch):
    monkeypatch.setenv("TL_AIRFLOW_HOME", str(tmp_path / "airflow_home"))
    monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", "from-the-deployment")
    assert airflow_env()["AIRFLOW__API_AUTH__JWT_SECRET"] == "from-the-deployment"
