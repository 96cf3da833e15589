# shellcheck shell=bash
# The demo's connection config, and the `epic-bridge send` line that reaches the running demo from another
# terminal. Sourced by stack/demo after lib.sh.
#
# With the default DEMO_* settings the demo runs connect-configs/local-sim.json itself, so the README's
# command works as printed. Other settings (ports, prefix, state folder) get an adjusted copy in
# $DEMO_STATE_DIR/demo-configs, and the printed command line names it and the stack's endpoints.

: "${DEMO_PATIENTS:=50}"          # seeded patients
: "${DEMO_ACTIVITY_RATE:=2}"      # simulated clinical changes per second
: "${DEMO_SIM_PORT:=8070}"        # the simulator's port
: "${DEMO_BRIDGE_PORT:=8088}"     # the bridge's HTTP port (JWKS, /metrics, /readyz)
: "${DEMO_TOPIC_PREFIX:=epic}"    # first part of the topic names
: "${DEMO_STATE_DIR:=$REPO_ROOT/.bridge-state}"
BIN="$REPO_ROOT/.venv/bin"

DEMO_SEND_ARGS="send local-sim Patient FIND --criteria 'identifier=urn:oid:1.2.840.114350.1.13.0.1.7.5.737384.14|203711'"

demo_config() {  # sets DEMO_CONFIG_DIR and DEMO_SEND
    local key="$DEMO_STATE_DIR/keys/local-sim.pem"
    if [ ! -f "$key" ]; then
        mkdir -p "$(dirname "$key")"
        "$BIN/epic-bridge" keys generate --connection local-sim --out "$key" >/dev/null
        say "generated the signing key $key"
    fi
    DEMO_CONFIG_DIR=$("$BIN/python" - "$REPO_ROOT/connect-configs" "$DEMO_STATE_DIR/demo-configs" "$key" \
        "$DEMO_SIM_PORT" "$DEMO_BRIDGE_PORT" "$DEMO_TOPIC_PREFIX" <<'PY'
import copy, json, os, pathlib, sys
src, out, key, sim_port, bridge_port, prefix = sys.argv[1:]
src, out = pathlib.Path(src), pathlib.Path(out)
cfg = json.loads((src / "local-sim.json").read_text())
clients = json.loads((src / "_sim-clients.json").read_text())
mine, my_clients = copy.deepcopy(cfg), copy.deepcopy(clients)
mine["fhir_base_url"] = mine["fhir_base_url"].replace(":8070/", f":{sim_port}/")
mine["topic_prefix"] = prefix
mine["auth"]["keys"] = [{"private_key": {"file": os.path.relpath(key, src)}}]
for client in my_clients:
    client["jwks_url"] = client["jwks_url"].replace(":8088/", f":{bridge_port}/")
if (mine, my_clients) == (cfg, clients):
    print(src)  # the committed config is this demo's config
    sys.exit()
out.mkdir(parents=True, exist_ok=True)
mine["auth"]["keys"] = [{"private_key": {"file": os.path.abspath(key)}}]
(out / "local-sim.json").write_text(json.dumps(mine, indent=2))
(out / "_sim-clients.json").write_text(json.dumps(my_clients, indent=2))
print(out)
PY
)
    # `epic-bridge` defaults: connect-configs/ and the stack's default endpoints; name what differs
    local env=""
    [ "$DEMO_CONFIG_DIR" = "$REPO_ROOT/connect-configs" ] || env+="EPIC_BRIDGE_CONFIG_DIR=$(printf '%q' "$DEMO_CONFIG_DIR") "
    [ "$KAFKA_BOOTSTRAP" = "127.0.0.1:9092" ] || env+="EPIC_BRIDGE_KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP "
    [ "$REGISTRY_URL" = "http://127.0.0.1:8081/apis/ccompat/v7" ] || env+="EPIC_BRIDGE_SCHEMA_REGISTRY_URL=$REGISTRY_URL "
    DEMO_SEND="$env.venv/bin/epic-bridge $DEMO_SEND_ARGS"
}
