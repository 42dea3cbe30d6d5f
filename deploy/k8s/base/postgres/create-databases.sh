#!/bin/sh
# Runs once, when PostgreSQL initialises an empty data folder: one database per service, each owned by
# the role the services log in as (password: DATABASE_PASSWORD in modelgallery-infra-secrets).
# The gateway keeps no database.
set -eu
psql --username "$POSTGRES_USER" --dbname postgres -v ON_ERROR_STOP=1 \
  --set=app_password="$DATABASE_PASSWORD" <<'SQL'
CREATE ROLE modelgallery LOGIN PASSWORD :'app_password';
CREATE DATABASE registry OWNER modelgallery;
CREATE DATABASE trainer OWNER modelgallery;
CREATE DATABASE optimizer OWNER modelgallery;
CREATE DATABASE deployer OWNER modelgallery;
CREATE DATABASE monitor OWNER modelgallery;
SQL
