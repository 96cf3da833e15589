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

# Scripts run with `set -o pipefail`: a reader that stops early (`grep -q`, `head`) would make the writer
# before it die of SIGPIPE and fail the whole pipeline although the answer was found. So nothing here
# pipes into an early-exit reader: one command reads the input to its end, or bash matches it itself.
pom_property() { sed -n "/<$1>/{s:.*<$1>\(.*\)</$1>.*:\1:p;q;}" "$STACK_ROOT/pom.xml"; }
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
    local file pid cmdline
    file=$(pid_file "$1")
    [ -f "$file" ] || return 1
    pid=$(cat "$file")
    [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
    cmdline=$(tr '\0' ' ' < "/proc/$pid/cmdline" 2>/dev/null) || return 1
    [[ "$cmdline" == *"$2"* ]] || return 1
    printf '%s' "$pid"
}

# Whether PID is a live process (a zombie is not). The wait loops of a start ask this, not running_pid:
# right after `cmd &` the forked shell has not exec'd java yet, so its command line lacks the marker and
# running_pid would call a service that is starting "exited".
process_alive() {  # process_alive PID
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }  # the fields after "(command name)", which may itself hold spaces
    [ "${stat%% *}" != Z ]
}

# Wait until CHECK... succeeds; die as soon as PID exits, or after STACK_START_TIMEOUT seconds.
await_start() {  # await_start NAME PID LOG CHECK...
    local name=$1 pid=$2 log=$3 waited=0
    shift 3
    until "$@"; do
        process_alive "$pid" || die "$name exited during start-up; see $log"
        [ "$waited" -lt "$STACK_START_TIMEOUT" ] || die "$name did not answer within ${STACK_START_TIMEOUT}s; see $log"
        sleep 1
        waited=$((waited + 1))
    done
}

# Whether FILE has a line containing TEXT after its first SKIP lines (awk reads the file itself: no pipe).
log_has_since() {  # log_has_since FILE SKIP TEXT
    [ -f "$1" ] || return 1
    awk -v skip="$2" -v text="$3" 'NR > skip && index($0, text) { found = 1; exit } END { exit !found }' "$1"
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
