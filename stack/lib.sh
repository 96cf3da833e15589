# shellcheck shell=bash
# Shared settings and helpers for stack/up, stack/down and stack/status. Sourced, not run.

STACK_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd "$STACK_ROOT/.." && pwd)

: "${STACK_DIR:=$REPO_ROOT/.stack}"            # runtime data, git-ignored
: "${STACK_HOST:=127.0.0.1}"                    # loopback only
: "${STACK_KAFKA_PORT:=9092}"
: "${STACK_CONTROLLER_PORT:=9093}"
: "${STACK_REGISTRY_PORT:=8081}"
: "${STACK_KAFKA_HEAP:=-Xmx1G -Xms256m}"
: "${STACK_REGISTRY_HEAP:=-Xmx768m}"
: "${STACK_START_TIMEOUT:=300}"                 # seconds to wait for each service (a broker with many topics loads slowly)

pom_property() { sed -n "s:.*<$1>\(.*\)</$1>.*:\1:p" "$STACK_ROOT/pom.xml" | head -n 1; }
KAFKA_VERSION=$(pom_property kafka.version)
APICURIO_VERSION=$(pom_property apicurio.version)

KAFKA_LIB="$STACK_DIR/kafka-$KAFKA_VERSION/lib"
KAFKA_DATA="$STACK_DIR/data/kafka"
APICURIO_HOME="$STACK_DIR/apicurio-registry-$APICURIO_VERSION"
LOG_DIR="$STACK_DIR/logs"
RUN_DIR="$STACK_DIR/run"

KAFKA_BOOTSTRAP="$STACK_HOST:$STACK_KAFKA_PORT"
REGISTRY_URL="http://$STACK_HOST:$STACK_REGISTRY_PORT/apis/ccompat/v7"

say() { printf 'stack: %s\n' "$*"; }
die() { printf 'stack: error: %s\n' "$*" >&2; exit 1; }

require_tool() {  # require_tool NAME HINT
    command -v "$1" >/dev/null 2>&1 || die "'$1' was not found on PATH. $2"
}

require_java17() {
    require_tool java "Install a JDK 17 or newer (e.g. 'apt-get install openjdk-17-jdk-headless')."
    local major
    major=$(java -XshowSettings:properties -version 2>&1 | sed -n 's/^ *java.specification.version = //p')
    [ "${major%%.*}" -ge 17 ] 2>/dev/null || die "Java $major found; Kafka 4 and Apicurio 3 need Java 17 or newer."
}

pid_file() { printf '%s/%s.pid' "$RUN_DIR" "$1"; }

# The pid recorded by `up` for a service, if that process still runs. The command line is checked
# too, so a recycled pid never makes us report (or kill) somebody else's process.
running_pid() {  # running_pid SERVICE MARKER
    local file pid
    file=$(pid_file "$1")
    [ -f "$file" ] || return 1
    pid=$(cat "$file")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
    printf '%s' "$pid"
}

# Apicurio's `all` archive is a Quarkus fast-jar (quarkus-run.jar) in 3.1+ and a legacy jar
# (<artifact>-runner.jar) in 3.0.
registry_jar() {
    local jar
    for jar in "$APICURIO_HOME/quarkus-run.jar" "$APICURIO_HOME"/*-runner.jar; do
        [ -f "$jar" ] && { printf '%s' "$jar"; return 0; }
    done
    return 1
}

KAFKA_MARKER="-Dstack.service=kafka"
REGISTRY_MARKER="-Dstack.service=registry"

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }
