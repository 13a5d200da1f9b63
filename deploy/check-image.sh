#!/bin/sh
# Build the image and run it as the README's "Docker" part says, then check what it promises:
# /healthz answers, `tasks list` works through `docker exec`, a task queued through the API
# runs inside the agents' bubblewrap sandbox in the container, Docker's health check passes,
# `docker stop` is clean, and without the security options or --user `serve` refuses, saying
# what to give it. It removes its containers and files; the image stays. It needs a Docker
# daemon, so `make test` does not run it (tests/cli/test_deploy.py keeps its command the
# README's).
#
# From the repository's root, as an unprivileged user in the `docker` group (the README's
# --user "$(id -u):$(id -g)" is that user): deploy/check-image.sh
# IMAGE (claude-hooks) and PORT (8080) choose the tag and the host port.
set -eu

image=${IMAGE:-claude-hooks}
port=${PORT:-8080}
if [ "$(id -u)" = 0 ]; then
    echo "error: run this as an unprivileged user in the docker group, not root: the README's" \
        "--user \"\$(id -u):\$(id -g)\" runs the service as that user" >&2
    exit 2
fi
[ -f deploy/Dockerfile ] || { echo "error: run this from the repository's root" >&2; exit 2; }

work=$(mktemp -d)
container=""
cleanup() {
    [ -z "$container" ] || docker rm -f "$container" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "FAIL: $*" >&2; [ -z "$container" ] || docker logs "$container" 2>&1 | tail -20 >&2; exit 1; }
ok() { echo "ok    $*"; }

docker build -f deploy/Dockerfile -t "$image" . >"$work/build.log" 2>&1 \
    || { tail -30 "$work/build.log" >&2; fail "docker build (its log above)"; }
ok "docker build -f deploy/Dockerfile -t $image ."

cd "$work"
docker run --rm --user "$(id -u):$(id -g)" -v "$PWD:/w" -w /w "$image" init --types dev=1 >/dev/null
[ "$(stat -c %a claude-hooks.toml)" = 600 ] || fail "init did not write claude-hooks.toml 0600"
# No forge, no Claude: the one type runs a small script in the sandbox, in an empty folder.
cat >agent.toml <<'EOF'
runner = "command"
command = ["sh", "-c", "echo \"pid 1: $(cat /proc/1/comm)\"; if [ -e /var/lib/claude-hooks/claude-hooks.db ]; then echo database visible; else echo database hidden; fi"]
workdir = "none"
EOF
sed -i -e '/^runner = "claude"/{r agent.toml' -e 'd}' claude-hooks.toml
grep -q '^workdir = "none"' claude-hooks.toml || fail "the dev type of init's file was not found"
token=$(sed -n 's/^api_token = "\([^"]*\)".*/\1/p' claude-hooks.toml)
ok "init wrote claude-hooks.toml (0600, uid $(id -u)); its dev type runs a script in the sandbox"

# The README's command, with -p on $PORT.
mkdir -p data && container=$(docker run -d -p "$port:8080" --user "$(id -u):$(id -g)" --stop-timeout 90 \
  --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
  --security-opt systempaths=unconfined \
  -v "$PWD/data:/var/lib/claude-hooks" \
  -v "$PWD/claude-hooks.toml:/etc/claude-hooks/claude-hooks.toml:ro" \
  -e CLAUDE_CODE_OAUTH_TOKEN "$image")
for _ in $(seq 60); do
    health=$(curl -fsS "http://127.0.0.1:$port/healthz" 2>/dev/null) && break
    [ "$(docker inspect -f '{{.State.Running}}' "$container")" = true ] || fail "the container stopped"
    sleep 1
done
echo "$health" | grep -q '"status":"ok"' || fail "/healthz did not answer within 60 s"
ok "/healthz: $health"

docker exec "$container" claude-hooks tasks list >/dev/null || fail "docker exec ... tasks list"
ok "docker exec <container> claude-hooks tasks list"

task=$(curl -fsS -H "Authorization: Bearer $token" -H 'Content-Type: application/json' \
    -X POST "http://127.0.0.1:$port/api/tasks" \
    -d '{"type": "dev", "kind": "work_issue", "repo": "acme/widget", "number": 17}')
id=$(echo "$task" | sed -n 's/^{"id":"\([^"]*\)".*/\1/p')
[ -n "$id" ] || fail "POST /api/tasks answered $task"
for _ in $(seq 60); do
    state=$(docker exec "$container" claude-hooks tasks show "$id" | tr "," "\n" \
        | sed -n 's/.*"state": *"\([a-z]*\)".*/\1/p' | head -1)
    case $state in succeeded | failed | cancelled) break ;; esac
    sleep 1
done
log=$(docker exec "$container" claude-hooks tasks log "$id")
[ "$state" = succeeded ] || fail "task $id is $state: $log"
echo "$log" | grep -qx 'pid 1: bwrap' || fail "task $id did not run in bubblewrap: $log"
echo "$log" | grep -qx 'database hidden' || fail "task $id saw the data dir: $log"
ok "task $id ran in the sandbox: $(echo "$log" | tr '\n' ';')"

for _ in $(seq 60); do  # the image's HEALTHCHECK: its first run is 30 s after the start
    health=$(docker inspect -f '{{.State.Health.Status}}' "$container")
    [ "$health" = starting ] || break
    sleep 1
done
[ "$health" = healthy ] || fail "docker's health check says $health"
ok "docker's health check: $health"

docker stop "$container" >/dev/null
[ "$(docker inspect -f '{{.State.ExitCode}}' "$container")" = 0 ] || fail "docker stop: not a clean exit"
docker logs "$container" 2>&1 | grep -q 'stops and lets go of dev-1' || fail "no clean stop in the log"
docker rm "$container" >/dev/null && container=""
ok "docker stop: exit 0, the node let its instance go"

# Without the security options: the one line that names them.
mkdir -p bare
refused=$(docker run --rm --user "$(id -u):$(id -g)" -v "$PWD/bare:/var/lib/claude-hooks" \
    -v "$PWD/claude-hooks.toml:/etc/claude-hooks/claude-hooks.toml:ro" "$image" 2>&1) \
    && fail "serve started without the security options"
echo "$refused" | grep -q "^error: cannot sandbox the agents of dev: .*--security-opt" \
    || fail "without the security options: $refused"
ok "without --security-opt: $refused"

# Without --user: the image's user cannot read the 0600 file, and is told so.
refused=$(docker run --rm --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
    --security-opt systempaths=unconfined -v "$PWD/bare:/var/lib/claude-hooks" \
    -v "$PWD/claude-hooks.toml:/etc/claude-hooks/claude-hooks.toml:ro" "$image" 2>&1) \
    && fail "serve started without --user"
echo "$refused" | grep -q "^error: config file .* cannot be read by uid .*--user" \
    || fail "without --user: $refused"
ok "without --user: $refused"
echo "the image $image works as the README says"
