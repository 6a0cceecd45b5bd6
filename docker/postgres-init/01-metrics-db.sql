-- The workflow's metrics database (TL_METRICS_DB_URL), beside Airflow's metadata database "airflow".
-- PostgreSQL's image runs this once, when its data volume is empty; the tables come from tl_tasks.store.
CREATE DATABASE metrics;
