"""The stages of a run and their rules (skip-unchanged, time limits). Light: the DAG file imports it at parse time."""
