#!/usr/bin/env bash
# `make run`: Redis (a private one if none answers), the example app, RQ workers (WORKERS,
# default 2: one import uses both), a demo
# admin, a demo project and a generated DICOM session; prints the curl line to import it.
# Ctrl-C stops everything this script started.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${PYTHON:=.venv/bin/python}"
: "${PORT:=8080}"
: "${HOST:=127.0.0.1}"
export DICOM_INBOX_REDIS_URL="${FLASK_DICOM_INBOX_REDIS_URL:-${DICOM_INBOX_REDIS_URL:-redis://127.0.0.1:6379/0}}"
source scripts/redis_url.sh
export FLASK_DICOM_INBOX_REDIS_URL="$DICOM_INBOX_REDIS_URL"
FLASK="$PYTHON -m flask --app example_app"

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo
    echo "stopping the app, the workers${PRIVATE_REDIS_PID:+ and the private redis-server}..."
    for pid in "${pids[@]}" ${PRIVATE_REDIS_PID:-}; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
}
trap stop_all INT TERM EXIT

instance=$($PYTHON -c 'from example_app import create_app; print(create_app().instance_path)')
inbox=$($PYTHON -c 'from example_app import create_app; from flask_dicom_inbox import DicomInbox; print(DicomInbox.state(create_app()).config.inbox_path)')
password_file="$instance/demo-admin-password"
if [ ! -s "$password_file" ]; then
    $PYTHON -c 'import secrets; print(secrets.token_urlsafe(12))' >"$password_file"
    chmod 600 "$password_file"
fi
password=$(cat "$password_file")
if ! $FLASK users create admin --password "$password" --admin 2>/dev/null; then
    echo "demo admin 'admin' exists already (password in $password_file)"
fi
$FLASK projects create test_proj --owner admin 2>/dev/null || echo "demo project test_proj exists already"
session="$inbox/test_proj/b/c"
if [ ! -d "$session" ] || [ -z "$(ls -A "$session")" ]; then
    $PYTHON -c 'import sys; from pathlib import Path; from example_app.demo import write_session; s = write_session(Path(sys.argv[1]), series=3, files_per_series=10); print(f"generated a demo session of {len(s.files)} DICOM files in {sys.argv[1]}")' "$session"
fi

for _ in $(seq 1 "${WORKERS:-2}"); do
    $FLASK dicom-inbox worker &
    pids+=($!)
done
$FLASK run --host "$HOST" --port "$PORT" &
pids+=($!)
for _ in $(seq 1 100); do
    curl -s -o /dev/null "http://$HOST:$PORT/" 2>/dev/null && break
    sleep 0.1
done

cat <<MSG

flask-dicom-inbox example app on http://localhost:$PORT (Redis: $DICOM_INBOX_REDIS_URL)
Demo admin: admin / $password   (kept in $password_file)

Import the demo session:
  curl -u admin:$password -X POST "http://localhost:$PORT/data/services/import?import-handler=inbox&cleanupAfterImport=false&PROJECT_ID=test_proj&SUBJECT_ID=test_subj&EXPT_LABEL=test_exp&path=$session"
It answers with the request's status URL (/xapi/dicom/<id>); follow it with
  curl -u admin:$password http://localhost:$PORT/xapi/dicom/<id>
Every request of yours: curl -u admin:$password http://localhost:$PORT/xapi/dicom/list/all
Or with the command-line client (waits, with a progress bar):
  DICOM_INBOX_PASSWORD=$password .venv/bin/dicom-inbox import $session --project test_proj --label test_exp --url http://localhost:$PORT --user admin --wait
Status page: http://localhost:$PORT/xapi/dicom/ui   Swagger UI: http://localhost:$PORT/xapi/swagger-ui.html
RQ dashboard (admins): http://localhost:$PORT/rq

Press Ctrl-C to stop.
MSG
wait
