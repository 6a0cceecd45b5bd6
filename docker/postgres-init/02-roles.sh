#!/bin/bash
# Least privilege: Airflow and the workflow each get a login role that owns only its own database; the
# superuser (POSTGRES_USER) stays inside the postgres container. Runs once, on an empty data volume, after
# 01-metrics-db.sql. Passwords come from the environment (.env), never from this file.
set -euo pipefail
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname airflow \
     -v airflow_pw="$AIRFLOW_DB_PASSWORD" -v metrics_pw="$METRICS_DB_PASSWORD" <<'SQL'
CREATE ROLE airflow LOGIN PASSWORD :'airflow_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE;
CREATE ROLE metrics LOGIN PASSWORD :'metrics_pw' NOSUPERUSER NOCREATEDB NOCREATEROLE;
ALTER DATABASE airflow OWNER TO airflow;
ALTER DATABASE metrics OWNER TO metrics;
REVOKE ALL ON DATABASE airflow FROM PUBLIC;
REVOKE ALL ON DATABASE metrics FROM PUBLIC;
GRANT CONNECT ON DATABASE airflow TO airflow;
GRANT CONNECT ON DATABASE metrics TO metrics;
ALTER SCHEMA public OWNER TO airflow;
\connect metrics
ALTER SCHEMA public OWNER TO metrics;
SQL
