#!/bin/sh
# Create the compose stack's secret files (deploy/secrets/ unless a directory is given): one
# random 32-character value each, for the stack's `secrets:`. An existing file is never
# replaced, so running it again is safe; delete a file (and the volumes) to rotate it.
# The directory is 0700 so that no other host user can read the files; the files are 0644
# because compose bind-mounts them with the host's owner, and each container's user must read
# its own.
#   sh deploy/make-secrets.sh [DIRECTORY]
set -eu
dir=${1:-"$(dirname "$0")/secrets"}
umask 077
mkdir -p "$dir"
chmod 700 "$dir"
for name in postgres_password app_db_password monitor_db_password grafana_admin_password \
  sidecar_metrics_token; do
  file="$dir/$name"
  if [ ! -s "$file" ]; then
    value=$(LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32)
    printf '%s' "$value" >"$file"
    chmod 644 "$file"
    echo "make-secrets: wrote $file"
  fi
done
