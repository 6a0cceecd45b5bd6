"""Airflow on this machine, for `make run` and `make airflow`: the project's Airflow settings and set-up (`env`),
and one headless DAG run through `dag.test()` (`run_dag`). Importing this package imports no Airflow."""
