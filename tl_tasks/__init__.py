"""CIFAR-10 transfer-learning retraining: the ML package behind the Airflow DAG.

Importable and testable without Airflow; heavy libraries are imported inside functions.
"""

__version__ = "0.12.0"
