# Sourced by scripts: make sure a Redis answers at $DICOM_INBOX_REDIS_URL (default
# redis://127.0.0.1:6379/0). When none does, start a private redis-server on a free local port,
# say so, export the new URL and remember its pid in $PRIVATE_REDIS_PID for the caller to stop.
: "${PYTHON:=python3}"
: "${DICOM_INBOX_REDIS_URL:=redis://127.0.0.1:6379/0}"
PRIVATE_REDIS_PID=""

_redis_answers() {
    "$PYTHON" - "$1" <<'PY' >/dev/null 2>&1
import sys, redis
redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
PY
}

if ! _redis_answers "$DICOM_INBOX_REDIS_URL"; then
    if ! command -v redis-server >/dev/null 2>&1; then
        if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
            echo "redis-server is missing: installing Debian's redis-server package" >&2
            apt-get update -qq >/dev/null && apt-get install -y -qq redis-server >/dev/null
        fi
    fi
    if ! command -v redis-server >/dev/null 2>&1; then
        echo "error: no Redis answers at $DICOM_INBOX_REDIS_URL and redis-server is not installed" >&2
        exit 1
    fi
    port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/dicom-inbox-redis.XXXXXX")
    redis-server --bind 127.0.0.1 --port "$port" --save "" --appendonly no \
        --dir "$redis_dir" --daemonize no >"$redis_dir/redis.log" 2>&1 &
    PRIVATE_REDIS_PID=$!
    for _ in $(seq 1 50); do
        _redis_answers "redis://127.0.0.1:$port/0" && break
        sleep 0.1
    done
    echo "No Redis answered at $DICOM_INBOX_REDIS_URL: started a private redis-server on 127.0.0.1:$port (pid $PRIVATE_REDIS_PID)" >&2
    DICOM_INBOX_REDIS_URL="redis://127.0.0.1:$port/0"
fi
export DICOM_INBOX_REDIS_URL
