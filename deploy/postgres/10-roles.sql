-- Roles of the docker-compose stack, run once by the postgres image (as the superuser, in the
-- POSTGRES_DB database) when it initialises an empty data directory. The app and the sidecar
-- never connect as the superuser; passwords come from the secret files, never from this file.
\set ON_ERROR_STOP on
\set app_password `cat /run/secrets/app_db_password`
\set monitor_password `cat /run/secrets/monitor_db_password`

-- The app: owns its database (so it creates its tables in the public schema), nothing more.
CREATE ROLE app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'app_password';
ALTER DATABASE app OWNER TO app;

-- The sidecar: reads pg_stat_activity (every session's state and query) and pg_settings through
-- pg_monitor, in read-only transactions, with a few connections at most.
CREATE ROLE observer_monitor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION CONNECTION LIMIT 3 PASSWORD :'monitor_password';
GRANT pg_monitor TO observer_monitor;
ALTER ROLE observer_monitor SET default_transaction_read_only = on;

-- Only these two roles (and the superuser) may connect to the database.
REVOKE CONNECT, TEMPORARY ON DATABASE app FROM PUBLIC;
GRANT CONNECT ON DATABASE app TO app, observer_monitor;
