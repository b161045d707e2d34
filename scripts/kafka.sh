#!/usr/bin/env bash
# Local single-node KRaft Apache Kafka broker for development, tests and CI.
#
# No Docker and no tarball download: the broker jars (org.apache.kafka:kafka_2.13
# plus a Log4j 2 binding, see scripts/kafka/pom.xml) are fetched from Maven
# Central with Maven and run directly with `java -cp`.
#
# Usage: scripts/kafka.sh {fetch|start|stop|status|wait|reset}
#
#   fetch   download the broker jars into the cache (idempotent)
#   start   fetch if needed, format storage if needed, start the broker in the
#           background and wait until it is up; a no-op if it is already running
#   stop    SIGTERM, wait up to KAFKA_STOP_TIMEOUT s, then SIGKILL (idempotent)
#   status  print whether the broker is running; exit 0 if it is, 1 if not
#   wait    wait until the broker answers (KAFKA_START_TIMEOUT s), exit 1 if not
#   reset   stop, then delete the state directory (topics, offsets, logs)
#
# Environment:
#   KAFKA_PORT             client (PLAINTEXT) port                  [9092]
#   KAFKA_CONTROLLER_PORT  KRaft controller port                    [9093]
#   KAFKA_STATE_DIR        data, config, log and pid file           [<repo>/.cache/kafka]
#   KAFKA_CACHE_DIR        jar cache; jars go in kafka-4.1.1/lib    [$HOME/.cache/eligibility-filter]
#   KAFKA_HEAP             broker max heap (-Xmx)                   [1g]
#   KAFKA_JVM_OPTS         extra JVM options for the broker         []
#   KAFKA_START_TIMEOUT    seconds to wait for the broker           [90]
#   KAFKA_STOP_TIMEOUT     seconds to wait after SIGTERM            [30]
#   KAFKA_BOOTSTRAP_SERVERS  if set (and KAFKA_FORCE_LOCAL is not), an external
#                          broker is in use: `start` does nothing and `wait` /
#                          `status` check the first host:port listed there.
#   KAFKA_FORCE_LOCAL      set to anything non-empty to manage the local broker
#                          even when KAFKA_BOOTSTRAP_SERVERS is set.
#   KAFKA_SASL_SSL_PORT    if set, a secured broker: an additional SASL_SSL listener
#                          on localhost:<port> (SCRAM-SHA-512 over TLS) and ACLs on
#                          (StandardAuthorizer). The PLAINTEXT and controller
#                          listeners stay as they are, their User:ANONYMOUS a super
#                          user, so local tools and the suite work unchanged. A
#                          throwaway CA and a broker certificate for DNS:localhost
#                          are made with openssl at the first secured start, in
#                          <state dir>/tls (clients trust tls/ca.pem). Unset, the
#                          broker is configured exactly as without it.  []
#   KAFKA_SCRAM_USERS      SCRAM-SHA-512 users of the secured broker, separated by
#                          spaces; `admin` is a super user, the others hold only the
#                          ACLs granted to them. Each password is made at random into
#                          <state dir>/scram/<user>.password; users are added at
#                          storage format time, or with kafka.admin.ConfigCommand after
#                          start when the storage exists already.          [admin]
set -euo pipefail

readonly KAFKA_VERSION="4.1.1"

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${SCRIPT_DIR}/.." && pwd)"
readonly SCRIPT_DIR REPO_ROOT
readonly POM="${SCRIPT_DIR}/kafka/pom.xml"
readonly LOG4J_CONFIG="${SCRIPT_DIR}/kafka/log4j2.properties"

readonly PORT="${KAFKA_PORT:-9092}"
readonly CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
readonly HEAP="${KAFKA_HEAP:-1g}"
readonly START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
readonly STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
readonly HOST="127.0.0.1"
readonly SASL_SSL_PORT="${KAFKA_SASL_SSL_PORT:-}"
# The secured listener's name: the broker certificate is made for it, so a client
# that connects by another name (127.0.0.1) fails the hostname check.
readonly SASL_SSL_HOST="localhost"
read -r -a SCRAM_USERS <<<"${KAFKA_SCRAM_USERS:-admin}"
readonly SCRAM_USERS

CACHE_ROOT="${KAFKA_CACHE_DIR:-${HOME}/.cache/eligibility-filter}"
STATE_DIR="${KAFKA_STATE_DIR:-${REPO_ROOT}/.cache/kafka}"
# Absolute paths: they end up in server.properties and in the JVM command line.
case "${CACHE_ROOT}" in /*) ;; *) CACHE_ROOT="${PWD}/${CACHE_ROOT}" ;; esac
case "${STATE_DIR}" in /*) ;; *) STATE_DIR="${PWD}/${STATE_DIR}" ;; esac
readonly CACHE_ROOT STATE_DIR

readonly DIST_DIR="${CACHE_ROOT}/kafka-${KAFKA_VERSION}"
readonly LIB_DIR="${DIST_DIR}/lib"
readonly MARKER="${LIB_DIR}/.fetch-complete"

readonly DATA_DIR="${STATE_DIR}/data"
readonly PROPS="${STATE_DIR}/server.properties"
readonly CLUSTER_ID_FILE="${STATE_DIR}/cluster.id"
readonly PID_FILE="${STATE_DIR}/kafka.pid"
readonly LOG_FILE="${STATE_DIR}/kafka.log"
readonly TLS_DIR="${STATE_DIR}/tls"
readonly SCRAM_DIR="${STATE_DIR}/scram"
# Users whose password was made on this start and who are not in the storage yet.
NEW_SCRAM_USERS=()

if [[ -n "${JAVA_HOME:-}" && -x "${JAVA_HOME}/bin/java" ]]; then
  JAVA="${JAVA_HOME}/bin/java"
else
  JAVA="java"
fi
readonly JAVA

msg() { printf 'kafka.sh: %s\n' "$*"; }
die() { printf 'kafka.sh: error: %s\n' "$*" >&2; exit 1; }

usage() {
  cat <<EOF
usage: scripts/kafka.sh {fetch|start|stop|status|wait|reset}
  local broker: ${HOST}:${PORT} (controller ${CONTROLLER_PORT}), state in ${STATE_DIR}
  see the header of this script for the environment variables
EOF
}

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }

validate_env() {
  is_uint "${PORT}" || die "KAFKA_PORT must be a number, got '${PORT}'"
  is_uint "${CONTROLLER_PORT}" || die "KAFKA_CONTROLLER_PORT must be a number, got '${CONTROLLER_PORT}'"
  [[ "${PORT}" != "${CONTROLLER_PORT}" ]] || die "KAFKA_PORT and KAFKA_CONTROLLER_PORT must differ (both ${PORT})"
  is_uint "${START_TIMEOUT}" || die "KAFKA_START_TIMEOUT must be whole seconds, got '${START_TIMEOUT}'"
  is_uint "${STOP_TIMEOUT}" || die "KAFKA_STOP_TIMEOUT must be whole seconds, got '${STOP_TIMEOUT}'"
  [[ "${HEAP}" =~ ^[0-9]+[kKmMgG]?$ ]] || die "KAFKA_HEAP must look like 512m or 1g, got '${HEAP}'"
  if secured; then
    is_uint "${SASL_SSL_PORT}" || die "KAFKA_SASL_SSL_PORT must be a number, got '${SASL_SSL_PORT}'"
    [[ "${SASL_SSL_PORT}" != "${PORT}" && "${SASL_SSL_PORT}" != "${CONTROLLER_PORT}" ]] ||
      die "KAFKA_SASL_SSL_PORT must differ from KAFKA_PORT and KAFKA_CONTROLLER_PORT (${SASL_SSL_PORT})"
    local user
    for user in "${SCRAM_USERS[@]}"; do
      [[ "${user}" =~ ^[A-Za-z0-9._-]+$ ]] || die "KAFKA_SCRAM_USERS: '${user}' is not a plain user name ([A-Za-z0-9._-])"
    done
  fi
}

secured() { [[ -n "${SASL_SSL_PORT}" ]]; }

# True when KAFKA_BOOTSTRAP_SERVERS points at a broker we do not manage.
external_broker() {
  [[ -n "${KAFKA_BOOTSTRAP_SERVERS:-}" && -z "${KAFKA_FORCE_LOCAL:-}" ]]
}

# port_open HOST PORT: a plain TCP connect, no Python or nc needed.
port_open() {
  # shellcheck disable=SC2016  # $1/$2 are expanded by the inner bash.
  timeout 2 bash -c 'exec 3<>"/dev/tcp/$1/$2"' _ "$1" "$2" 2>/dev/null
}

# ---------------------------------------------------------------- fetch

need_cmd() {
  command -v "$1" >/dev/null 2>&1 || die "'$1' not found on PATH: $2"
}

check_java() {
  need_cmd "${JAVA}" "install a Java 17+ runtime (e.g. apt-get install openjdk-17-jre-headless)"
  local version_line major
  version_line="$("${JAVA}" -version 2>&1 | head -n 1)"
  major="$(sed -E 's/.*version "([0-9]+)(\.[0-9]+)*.*/\1/' <<<"${version_line}")"
  if [[ "${major}" == "1" ]] || ! is_uint "${major}" || (( major < 17 )); then
    die "Kafka ${KAFKA_VERSION} needs Java 17 or newer; ${JAVA} is: ${version_line}"
  fi
}

pom_hash() { sha256sum "${POM}" | cut -d ' ' -f 1; }

fetch_complete() {
  [[ -f "${MARKER}" ]] && [[ "$(cat "${MARKER}")" == "kafka ${KAFKA_VERSION} pom-sha256 $(pom_hash)" ]]
}

cmd_fetch() {
  if fetch_complete; then
    msg "jars already fetched in ${LIB_DIR}"
    return 0
  fi
  need_cmd mvn "install Maven (e.g. apt-get install maven)"
  mkdir -p "${DIST_DIR}"
  # Serialise concurrent fetches (e.g. parallel CI steps) on the same cache.
  exec 8>"${DIST_DIR}/.fetch.lock"
  if command -v flock >/dev/null 2>&1; then
    flock 8
  fi
  if fetch_complete; then
    msg "jars already fetched in ${LIB_DIR}"
    exec 8>&-
    return 0
  fi
  local tmp="${DIST_DIR}/lib.tmp.$$"
  rm -rf "${tmp}"
  msg "fetching Kafka ${KAFKA_VERSION} jars from Maven Central into ${LIB_DIR}"
  local mvn_log="${DIST_DIR}/fetch.log"
  if ! mvn -B -ntp -f "${POM}" dependency:copy-dependencies \
      -DoutputDirectory="${tmp}" -DincludeScope=runtime >"${mvn_log}" 2>&1; then
    rm -rf "${tmp}"
    tail -n 40 "${mvn_log}" >&2
    die "mvn dependency:copy-dependencies failed (full output in ${mvn_log})"
  fi
  if [[ ! -f "${tmp}/kafka_2.13-${KAFKA_VERSION}.jar" ]]; then
    rm -rf "${tmp}"
    exec 8>&-
    die "Maven finished but kafka_2.13-${KAFKA_VERSION}.jar is missing"
  fi
  printf 'kafka %s pom-sha256 %s\n' "${KAFKA_VERSION}" "$(pom_hash)" >"${tmp}/.fetch-complete"
  rm -rf "${LIB_DIR}"
  mv "${tmp}" "${LIB_DIR}"
  exec 8>&-
  local n
  n="$(find "${LIB_DIR}" -maxdepth 1 -name '*.jar' | wc -l)"
  msg "fetched ${n// /} jars into ${LIB_DIR}"
}

# ---------------------------------------------------------------- process

read_pid() {
  [[ -f "${PID_FILE}" ]] || return 1
  local pid
  pid="$(tr -dc '0-9' <"${PID_FILE}")"
  [[ -n "${pid}" ]] || return 1
  printf '%s\n' "${pid}"
}

# pid_is_ours PID: alive and really our broker (guards against pid reuse).
pid_is_ours() {
  local args
  kill -0 "$1" 2>/dev/null || return 1
  args="$(ps -o args= -p "$1" 2>/dev/null || true)"
  [[ "${args}" == *kafka.Kafka* && "${args}" == *"${PROPS}"* ]]
}

# Prints the pid of our running broker, or fails.
running_pid() {
  local pid
  pid="$(read_pid)" || return 1
  pid_is_ours "${pid}" || return 1
  printf '%s\n' "${pid}"
}

server_started_logged() {
  [[ -f "${LOG_FILE}" ]] && grep -q 'Kafka Server started' "${LOG_FILE}"
}

show_log_tail() {
  if [[ -s "${LOG_FILE}" ]]; then
    msg "last 40 lines of ${LOG_FILE}:" >&2
    tail -n 40 "${LOG_FILE}" >&2
  else
    msg "log file ${LOG_FILE} is empty or missing" >&2
  fi
}

write_server_properties() {
  mkdir -p "${DATA_DIR}"
  cat >"${PROPS}" <<EOF
# Generated by scripts/kafka.sh on every start; edits are overwritten.
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@${HOST}:${CONTROLLER_PORT}
listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT}
advertised.listeners=PLAINTEXT://${HOST}:${PORT}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs=${DATA_DIR}

num.partitions=1
default.replication.factor=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
# One partition: a local broker serves few groups, and 50 make every new group wait.
offsets.topic.num.partitions=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0

# Small segments and a fast cleaner so compaction is observable in tests.
log.segment.bytes=16777216
# A deleted topic's files go 1 s after the deletion, not 60 s (the default): the test
# suites and benchmarks delete their topics as they finish, and a minute later the
# broker spent seconds removing them, in the middle of whatever ran next (a latency
# run measured a 4 s episode of doubled latency at that moment; docs/benchmarks.md).
log.segment.delete.delay.ms=1000
log.cleaner.backoff.ms=1000
log.cleaner.dedupe.buffer.size=33554432
log.retention.check.interval.ms=30000
EOF
  if secured; then
    write_security_properties
  fi
}

# The secured broker's additions: a SASL_SSL listener, SCRAM, TLS from tls/, ACLs on.
write_security_properties() {
  sed -i \
    -e "s|^listeners=.*|listeners=PLAINTEXT://${HOST}:${PORT},CONTROLLER://${HOST}:${CONTROLLER_PORT},SASL_SSL://${HOST}:${SASL_SSL_PORT}|" \
    -e "s|^advertised.listeners=.*|advertised.listeners=PLAINTEXT://${HOST}:${PORT},SASL_SSL://${SASL_SSL_HOST}:${SASL_SSL_PORT}|" \
    -e "s|^listener.security.protocol.map=.*|listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL|" \
    "${PROPS}"
  cat >>"${PROPS}" <<EOF

# Secured (KAFKA_SASL_SSL_PORT): SCRAM-SHA-512 over TLS on the SASL_SSL listener.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.keystore.type=PEM
ssl.keystore.location=${TLS_DIR}/broker.pem
ssl.client.auth=none
# ACLs on. The PLAINTEXT and controller listeners authenticate nobody: their
# User:ANONYMOUS is a super user, so the broker's own traffic and local tools work as
# on the unsecured broker; on the SASL_SSL listener only User:admin is a super user.
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:ANONYMOUS;User:admin
EOF
}

# A throwaway CA and a broker certificate signed by it (DNS:localhost only), made once
# per state directory and again when either expires within a day; never committed
# (the state directory is under .cache/).
make_tls_material() {
  need_cmd openssl "install OpenSSL (e.g. apt-get install openssl) to make the test CA"
  if [[ -s "${TLS_DIR}/broker.pem" && -s "${TLS_DIR}/ca.pem" ]] &&
    openssl x509 -checkend 86400 -noout -in "${TLS_DIR}/ca.pem" >/dev/null 2>&1 &&
    openssl x509 -checkend 86400 -noout -in "${TLS_DIR}/broker.crt" >/dev/null 2>&1; then
    return 0
  fi
  mkdir -p "${TLS_DIR}"
  chmod 700 "${TLS_DIR}"
  local log="${TLS_DIR}/openssl.log"
  {
    openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=eligibility-filter local test CA" \
      -keyout "${TLS_DIR}/ca.key" -out "${TLS_DIR}/ca.pem" &&
      openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "${TLS_DIR}/broker.key" &&
      openssl req -new -key "${TLS_DIR}/broker.key" -subj "/CN=${SASL_SSL_HOST}" -out "${TLS_DIR}/broker.csr" &&
      printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\n' "${SASL_SSL_HOST}" >"${TLS_DIR}/broker.ext" &&
      openssl x509 -req -in "${TLS_DIR}/broker.csr" -CA "${TLS_DIR}/ca.pem" -CAkey "${TLS_DIR}/ca.key" \
        -CAcreateserial -days 30 -extfile "${TLS_DIR}/broker.ext" -out "${TLS_DIR}/broker.crt"
  } >"${log}" 2>&1 || { cat "${log}" >&2; die "openssl could not make the test CA and broker certificate"; }
  # Kafka's PEM keystore: the unencrypted PKCS#8 key, then the certificate chain.
  cat "${TLS_DIR}/broker.key" "${TLS_DIR}/broker.crt" "${TLS_DIR}/ca.pem" >"${TLS_DIR}/broker.pem"
  chmod 600 "${TLS_DIR}"/*.key "${TLS_DIR}/broker.pem"
  msg "made a throwaway CA (${TLS_DIR}/ca.pem) and a broker certificate for DNS:${SASL_SSL_HOST}"
}

# A random password for each SCRAM user that has none yet; those users are new.
make_scram_passwords() {
  mkdir -p "${SCRAM_DIR}"
  chmod 700 "${SCRAM_DIR}"
  local user file
  for user in "${SCRAM_USERS[@]}"; do
    file="${SCRAM_DIR}/${user}.password"
    [[ -s "${file}" ]] && continue
    (umask 077 && openssl rand -hex 24 >"${file}")
    NEW_SCRAM_USERS+=("${user}")
  done
}

# The storage format's `--add-scram` arguments, one per line, for every SCRAM user.
# The passwords pass on the Kafka tools' command lines (visible to `ps` while they run):
# acceptable for this throwaway local broker, not a way to provision a real one.
scram_format_args() {
  local user
  for user in "${SCRAM_USERS[@]}"; do
    printf -- '--add-scram\nSCRAM-SHA-512=[name=%s,password=%s]\n' "${user}" "$(cat "${SCRAM_DIR}/${user}.password")"
  done
}

# Users new on this start whose storage was formatted before: added on the running broker.
add_new_scram_users() {
  local user
  for user in "${NEW_SCRAM_USERS[@]}"; do
    msg "adding SCRAM user ${user}"
    "${JAVA}" -Xmx256m -Dlog4j2.configurationFile="${LOG4J_CONFIG}" -cp "${LIB_DIR}/*" kafka.admin.ConfigCommand \
      --bootstrap-server "${HOST}:${PORT}" --alter --entity-type users --entity-name "${user}" \
      --add-config "SCRAM-SHA-512=[password=$(cat "${SCRAM_DIR}/${user}.password")]" \
      >"${STATE_DIR}/scram.log" 2>&1 || {
      cat "${STATE_DIR}/scram.log" >&2
      rm -f "${SCRAM_DIR}/${user}.password"
      die "could not add SCRAM user ${user}"
    }
  done
  NEW_SCRAM_USERS=()
}

format_storage_if_needed() {
  if [[ -f "${DATA_DIR}/meta.properties" ]]; then
    return 0
  fi
  local cluster_id
  if [[ -s "${CLUSTER_ID_FILE}" ]]; then
    cluster_id="$(tr -d '[:space:]' <"${CLUSTER_ID_FILE}")"
  else
    cluster_id="$("${JAVA}" -Xmx256m -Dlog4j2.configurationFile="${LOG4J_CONFIG}" \
      -cp "${LIB_DIR}/*" kafka.tools.StorageTool random-uuid | tail -n 1 | tr -d '[:space:]')"
    [[ -n "${cluster_id}" ]] || die "StorageTool random-uuid printed no cluster id"
    printf '%s\n' "${cluster_id}" >"${CLUSTER_ID_FILE}"
  fi
  local -a scram=()
  if secured; then
    mapfile -t scram < <(scram_format_args)
  fi
  msg "formatting storage in ${DATA_DIR} (cluster id ${cluster_id})"
  "${JAVA}" -Xmx256m -Dlog4j2.configurationFile="${LOG4J_CONFIG}" \
    -cp "${LIB_DIR}/*" kafka.tools.StorageTool format \
    -t "${cluster_id}" -c "${PROPS}" "${scram[@]}" >"${STATE_DIR}/format.log" 2>&1 || {
    cat "${STATE_DIR}/format.log" >&2
    die "kafka.tools.StorageTool format failed"
  }
  NEW_SCRAM_USERS=()  # the format added them all
}

# wait_until_up PID: poll until the broker logged its start and the port answers.
# Returns 1 on timeout, 2 if the process died.
wait_until_up() {
  local pid="$1" deadline=$((SECONDS + START_TIMEOUT))
  while (( SECONDS < deadline )); do
    if ! pid_is_ours "${pid}"; then
      return 2
    fi
    if server_started_logged && port_open "${HOST}" "${PORT}" &&
      { ! secured || port_open "${HOST}" "${SASL_SSL_PORT}"; }; then
      return 0
    fi
    sleep 0.5
  done
  return 1
}

cmd_start() {
  if external_broker; then
    msg "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS} is set: using that external broker, not starting a local one (set KAFKA_FORCE_LOCAL=1 to override)"
    return 0
  fi
  local pid
  if pid="$(running_pid)"; then
    if port_open "${HOST}" "${PORT}"; then
      msg "already running (pid ${pid}) on ${HOST}:${PORT}; nothing to do"
      return 0
    fi
    msg "process ${pid} is running but ${HOST}:${PORT} does not answer yet; waiting"
    cmd_wait
    return
  fi
  rm -f "${PID_FILE}"
  check_java
  cmd_fetch
  local p
  for p in "${PORT}" "${CONTROLLER_PORT}" ${SASL_SSL_PORT}; do
    if port_open "${HOST}" "${p}"; then
      die "port ${HOST}:${p} is already in use by another process; pick others with KAFKA_PORT / KAFKA_CONTROLLER_PORT"
    fi
  done
  mkdir -p "${STATE_DIR}"
  write_server_properties
  if secured; then
    make_tls_material
    make_scram_passwords
  fi
  format_storage_if_needed
  if [[ -f "${LOG_FILE}" ]]; then
    mv -f "${LOG_FILE}" "${LOG_FILE}.prev"
  fi

  local -a jvm_opts=(
    "-Xmx${HEAP}"
    -XX:+UseG1GC
    -XX:MaxGCPauseMillis=20
    -Djava.awt.headless=true
    "-Dlog4j2.configurationFile=${LOG4J_CONFIG}"
    "-Dkafka.logs.dir=${STATE_DIR}"
  )
  if [[ -n "${KAFKA_JVM_OPTS:-}" ]]; then
    local -a extra
    read -r -a extra <<<"${KAFKA_JVM_OPTS}"
    jvm_opts+=("${extra[@]}")
  fi

  msg "starting Kafka ${KAFKA_VERSION} on ${HOST}:${PORT} (controller ${CONTROLLER_PORT}), state in ${STATE_DIR}"
  nohup "${JAVA}" "${jvm_opts[@]}" -cp "${LIB_DIR}/*" kafka.Kafka "${PROPS}" \
    >"${LOG_FILE}" 2>&1 </dev/null 9>&- &
  pid=$!
  printf '%s\n' "${pid}" >"${PID_FILE}"

  local rc=0
  wait_until_up "${pid}" || rc=$?
  case "${rc}" in
    0)
      msg "started (pid ${pid}); bootstrap servers ${HOST}:${PORT}; log ${LOG_FILE}"
      if secured; then
        add_new_scram_users
        msg "secured listener SASL_SSL://${SASL_SSL_HOST}:${SASL_SSL_PORT} (SCRAM-SHA-512, CA ${TLS_DIR}/ca.pem, passwords in ${SCRAM_DIR})"
      fi
      ;;
    2)
      rm -f "${PID_FILE}"
      msg "error: broker process ${pid} exited during startup" >&2
      show_log_tail
      exit 1
      ;;
    *)
      msg "error: broker did not come up within ${START_TIMEOUT}s (KAFKA_START_TIMEOUT)" >&2
      show_log_tail
      msg "stopping the half-started broker (pid ${pid})" >&2
      cmd_stop >/dev/null || true
      exit 1
      ;;
  esac
}

cmd_stop() {
  local pid
  if ! pid="$(read_pid)"; then
    msg "not running (no pid file)"
    return 0
  fi
  if ! pid_is_ours "${pid}"; then
    rm -f "${PID_FILE}"
    msg "not running (removed stale pid file for ${pid})"
    return 0
  fi
  msg "stopping broker (pid ${pid})"
  kill -TERM "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + STOP_TIMEOUT))
  while (( SECONDS < deadline )) && kill -0 "${pid}" 2>/dev/null; do
    sleep 0.5
  done
  if kill -0 "${pid}" 2>/dev/null; then
    msg "still running after ${STOP_TIMEOUT}s; sending SIGKILL"
    kill -KILL "${pid}" 2>/dev/null || true
    while kill -0 "${pid}" 2>/dev/null; do sleep 0.2; done
  fi
  rm -f "${PID_FILE}"
  msg "stopped"
}

# First host:port of KAFKA_BOOTSTRAP_SERVERS (scheme prefixes like SASL_SSL:// stripped).
external_host_port() {
  local first="${KAFKA_BOOTSTRAP_SERVERS%%,*}"
  first="${first##*://}"
  first="${first//[[:space:]]/}"
  [[ "${first}" == *:* ]] || first="${first}:9092"
  printf '%s %s\n' "${first%:*}" "${first##*:}"
}

cmd_status() {
  if external_broker; then
    local host port
    read -r host port < <(external_host_port)
    if port_open "${host}" "${port}"; then
      msg "external broker ${host}:${port} (from KAFKA_BOOTSTRAP_SERVERS) answers"
      return 0
    fi
    msg "external broker ${host}:${port} (from KAFKA_BOOTSTRAP_SERVERS) does not answer"
    return 1
  fi
  local pid
  if pid="$(running_pid)"; then
    if port_open "${HOST}" "${PORT}"; then
      msg "running (pid ${pid}) on ${HOST}:${PORT}; state ${STATE_DIR}"
      return 0
    fi
    msg "process ${pid} alive but ${HOST}:${PORT} does not answer (starting or unhealthy); log ${LOG_FILE}"
    return 1
  fi
  if [[ -f "${PID_FILE}" ]]; then
    msg "not running (stale pid file ${PID_FILE})"
  else
    msg "not running"
  fi
  return 1
}

cmd_wait() {
  if external_broker; then
    local host port deadline=$((SECONDS + START_TIMEOUT))
    read -r host port < <(external_host_port)
    until port_open "${host}" "${port}"; do
      if (( SECONDS >= deadline )); then
        die "external broker ${host}:${port} did not answer within ${START_TIMEOUT}s"
      fi
      sleep 0.5
    done
    msg "external broker ${host}:${port} answers"
    return 0
  fi
  local pid
  if ! pid="$(running_pid)"; then
    die "not running; use 'scripts/kafka.sh start'"
  fi
  local rc=0
  wait_until_up "${pid}" || rc=$?
  case "${rc}" in
    0) msg "up (pid ${pid}) on ${HOST}:${PORT}" ;;
    2) msg "error: broker process ${pid} exited" >&2; show_log_tail; exit 1 ;;
    *) msg "error: broker did not come up within ${START_TIMEOUT}s (KAFKA_START_TIMEOUT)" >&2; show_log_tail; exit 1 ;;
  esac
}

cmd_reset() {
  cmd_stop
  if [[ -d "${STATE_DIR}" ]]; then
    rm -rf "${STATE_DIR}"
    msg "deleted ${STATE_DIR}"
  else
    msg "nothing to delete (${STATE_DIR} does not exist)"
  fi
}

# Serialise start/stop/reset on one state directory (e.g. parallel test
# sessions calling `start`). The lock is released when this script exits; the
# broker itself is started with fd 9 closed so it never holds the lock.
lock_state() {
  command -v flock >/dev/null 2>&1 || return 0
  mkdir -p "${STATE_DIR}"
  exec 9>"${STATE_DIR}/.kafka.sh.lock"
  flock 9
}

main() {
  if (( $# != 1 )); then
    usage >&2
    exit 2
  fi
  validate_env
  case "$1" in
    fetch) check_java; cmd_fetch ;;
    start) external_broker || lock_state; cmd_start ;;
    stop) [[ ! -d "${STATE_DIR}" ]] || lock_state; cmd_stop ;;
    status) cmd_status ;;
    wait) cmd_wait ;;
    reset) [[ ! -d "${STATE_DIR}" ]] || lock_state; cmd_reset ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
