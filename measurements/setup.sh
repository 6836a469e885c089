#!/usr/bin/env bash
# Install the peers the suite measures, one by one, so that one that fails to
# install does not stop the others (its contestants then report "not installed").
# The Redis contestants also need a redis-server binary (Debian: apt-get install redis-server).
set -u
cd "$(dirname "$0")"
python="${PYTHON:-python}"
failed=()
while IFS= read -r line; do
    requirement="${line%%#*}"
    requirement="${requirement//[[:space:]]/}"
    [ -z "$requirement" ] && continue
    if ! "$python" -m pip install --quiet "$requirement"; then
        failed+=("$requirement")
    fi
done < requirements.txt
if ! command -v redis-server >/dev/null 2>&1; then
    echo "redis-server not found: the Redis contestants will be skipped" >&2
fi
if [ "${#failed[@]}" -gt 0 ]; then
    echo "could not install: ${failed[*]}" >&2
fi
exit 0
