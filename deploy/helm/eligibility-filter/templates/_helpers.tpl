{{/* Names, labels, and what the worker and the verifier share: Kafka settings, secrets as files. */}}

{{- define "ef.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "ef.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "ef.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "ef.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: eligibility-filter
{{- end -}}

{{/* Selector labels of one component: (dict "root" $ "component" "worker") */}}
{{- define "ef.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ef.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "ef.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* The topic specs of stream/runtime/topics.py (files/topics.yaml), each with its name after topics.names. */}}
{{- define "ef.topics" -}}
{{- $doc := .Files.Get "files/topics.yaml" | fromYaml -}}
{{- $out := list -}}
{{- range $doc.topics -}}
{{- $name := get $.Values.topics.names .key | default .name -}}
{{- $out = append $out (dict "key" .key "name" $name "env" .env "config" .config "renamed" (ne $name .name)) -}}
{{- end -}}
{{- toYaml (dict "topics" $out) -}}
{{- end -}}

{{/* The name of one topic by its key: (dict "root" $ "key" "feed") */}}
{{- define "ef.topicName" -}}
{{- $found := "" -}}
{{- range (include "ef.topics" .root | fromYaml).topics -}}
{{- if eq .key $.key -}}{{- $found = .name -}}{{- end -}}
{{- end -}}
{{- if not $found -}}{{- fail (printf "no topic with key %q in files/topics.yaml (run `make chart`)" .key) -}}{{- end -}}
{{- $found -}}
{{- end -}}

{{- define "ef.usesSasl" -}}
{{- if has .Values.kafka.securityProtocol (list "SASL_PLAINTEXT" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{- define "ef.usesTls" -}}
{{- if has .Values.kafka.securityProtocol (list "SSL" "SASL_SSL") -}}true{{- end -}}
{{- end -}}

{{- define "ef.strimziUsers" -}}
{{- if and .Values.strimzi.enabled .Values.strimzi.users.enabled -}}true{{- end -}}
{{- end -}}

{{/* The CA Secret's name and key, or nothing: explicit, else Strimzi's cluster CA. */}}
{{- define "ef.caSecret" -}}
{{- $name := .Values.kafka.tls.caSecret.name -}}
{{- if and (not $name) .Values.strimzi.enabled -}}
{{- $name = printf "%s-cluster-ca-cert" .Values.strimzi.cluster -}}
{{- end -}}
{{- if and $name (include "ef.usesTls" .) -}}
{{- toYaml (dict "name" $name "key" .Values.kafka.tls.caSecret.key) -}}
{{- end -}}
{{- end -}}

{{/*
A component's credentials, resolved: (dict "root" $ "component" "worker" "values" .Values.worker).
Explicit values win; with Strimzi users on, the KafkaUser <fullname>-<component> and the
Secret Strimzi makes for it (same name: `password`, or `user.crt` / `user.key`).
Fails with a message naming the value when the protocol needs something that is not set.
*/}}
{{- define "ef.credentials" -}}
{{- $root := .root -}}
{{- $c := .values.credentials -}}
{{- $user := printf "%s-%s" (include "ef.fullname" $root) .component -}}
{{- $strimzi := include "ef.strimziUsers" $root -}}
{{- $out := dict -}}
{{- if include "ef.usesSasl" $root -}}
{{- $username := $c.saslUsername | default (ternary $user "" (eq $strimzi "true")) -}}
{{- $secret := $c.saslPasswordSecret.name | default (ternary $user "" (eq $strimzi "true")) -}}
{{- if or (not $username) (not $secret) -}}
{{- fail (printf "kafka.securityProtocol=%s: set %s.credentials.saslUsername and %s.credentials.saslPasswordSecret.name (or strimzi.enabled with strimzi.users.enabled)" $root.Values.kafka.securityProtocol .component .component) -}}
{{- end -}}
{{- $_ := set $out "saslUsername" $username -}}
{{- $_ := set $out "saslPasswordSecret" (dict "name" $secret "key" $c.saslPasswordSecret.key) -}}
{{- end -}}
{{- if include "ef.usesTls" $root -}}
{{- $tlsUser := and (eq $strimzi "true") (eq $root.Values.strimzi.users.authentication "tls") -}}
{{- $secret := $c.tlsClientSecret.name | default (ternary $user "" $tlsUser) -}}
{{- if $secret -}}
{{- $_ := set $out "tlsClientSecret" (dict "name" $secret "certKey" $c.tlsClientSecret.certKey "keyKey" $c.tlsClientSecret.keyKey) -}}
{{- end -}}
{{- end -}}
{{- toYaml $out -}}
{{- end -}}

{{/*
Every check of the values that the schema cannot express, in one order, whichever
template renders first: the pseudonym key, each program's credentials, the replicas.
*/}}
{{- define "ef.validate" -}}
{{- if not (or .Values.pseudonymKey.existingSecret .Values.devMode) -}}
{{- fail "pseudonymKey.existingSecret: name the Secret holding the pseudonym key (32 bytes or more); only devMode=true runs without one" -}}
{{- end -}}
{{- $_ := include "ef.credentials" (dict "root" . "component" "worker" "values" .Values.worker) -}}
{{- if .Values.verifier.enabled -}}
{{- $_ := include "ef.credentials" (dict "root" . "component" "verifier" "values" .Values.verifier) -}}
{{- end -}}
{{- if .Values.canary.enabled -}}
{{- $_ := include "ef.credentials" (dict "root" . "component" "canary" "values" .Values.canary) -}}
{{- end -}}
{{- if gt (int .Values.worker.replicas) (int .Values.topics.partitions) -}}
{{- fail (printf "worker.replicas=%d exceeds topics.partitions=%d: each worker holds whole partition numbers, so the extra pods would get none, never turn ready and stall every rolling update" (int .Values.worker.replicas) (int .Values.topics.partitions)) -}}
{{- end -}}
{{- if gt (mul (int .Values.worker.replicas) (int (.Values.worker.processes | default 1))) (int .Values.topics.partitions) -}}
{{- fail (printf "worker.replicas=%d x worker.processes=%d exceeds topics.partitions=%d: each worker process holds whole partition numbers, so the extra ones would get none" (int .Values.worker.replicas) (int (.Values.worker.processes | default 1)) (int .Values.topics.partitions)) -}}
{{- end -}}
{{- /* Each worker process runs on one thread and uses about one core: a pod asking for fewer
cores than it has processes only queues them on its share (README "Using a pod's cores"). */ -}}
{{- $processes := int (.Values.worker.processes | default 1) -}}
{{- $cpu := toString (dig "requests" "cpu" "" (.Values.worker.resources | default dict)) -}}
{{- if and (gt $processes 1) $cpu -}}
{{- $cores := 0.0 -}}
{{- if hasSuffix "m" $cpu -}}
{{- $cores = divf (float64 (trimSuffix "m" $cpu)) 1000 -}}
{{- else -}}
{{- $cores = float64 $cpu -}}
{{- end -}}
{{- if lt $cores (float64 $processes) -}}
{{- fail (printf "worker.processes=%d needs worker.resources.requests.cpu of at least %d (one core per process), not %s" $processes $processes $cpu) -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* Where the secrets are mounted (read-only, one directory each). */}}
{{- define "ef.paths" -}}
pseudonymKey: /etc/eligibility-filter/pseudonym
previousPseudonymKey: /etc/eligibility-filter/pseudonym-previous
policy: /etc/eligibility-filter/policy
ca: /etc/eligibility-filter/kafka/ca
sasl: /etc/eligibility-filter/kafka/sasl
tlsClient: /etc/eligibility-filter/kafka/client
{{- end -}}

{{/*
Environment every program reads: (dict "root" $ "component" "worker" "values" .Values.worker).
The canary never pseudonymises: it gets no pseudonym key.
*/}}
{{- define "ef.commonEnv" -}}
{{- $root := .root -}}
{{- $paths := include "ef.paths" $root | fromYaml -}}
{{- $creds := include "ef.credentials" . | fromYaml -}}
- name: KAFKA_BOOTSTRAP_SERVERS
  value: {{ $root.Values.kafka.bootstrapServers | quote }}
- name: KAFKA_SECURITY_PROTOCOL
  value: {{ $root.Values.kafka.securityProtocol | quote }}
{{- if include "ef.usesSasl" $root }}
- name: KAFKA_SASL_MECHANISM
  value: {{ $root.Values.kafka.sasl.mechanism | quote }}
- name: KAFKA_SASL_USERNAME
  value: {{ $creds.saslUsername | quote }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: {{ printf "%s/password" $paths.sasl | quote }}
{{- end }}
{{- if include "ef.usesTls" $root }}
{{- if include "ef.caSecret" $root }}
- name: KAFKA_SSL_CA_FILE
  value: {{ printf "%s/ca.crt" $paths.ca | quote }}
{{- end }}
{{- if $creds.tlsClientSecret }}
- name: KAFKA_SSL_CERT_FILE
  value: {{ printf "%s/tls.crt" $paths.tlsClient | quote }}
- name: KAFKA_SSL_KEY_FILE
  value: {{ printf "%s/tls.key" $paths.tlsClient | quote }}
{{- end }}
- name: KAFKA_SSL_CHECK_HOSTNAME
  value: {{ ternary "1" "0" $root.Values.kafka.tls.checkHostname | quote }}
{{- end }}
{{- if $root.Values.devMode }}
- name: STREAM_DEV_MODE
  value: "1"
{{- end }}
{{- if and $root.Values.pseudonymKey.existingSecret (ne .component "canary") }}
- name: STREAM_PSEUDONYM_KEY_FILE
  value: {{ printf "%s/key" $paths.pseudonymKey | quote }}
{{- end }}
{{- if and (eq .component "verifier") $root.Values.pseudonymKey.previousSecret.name }}
- name: STREAM_PSEUDONYM_PREVIOUS_KEY_FILE
  value: {{ printf "%s/key" $paths.previousPseudonymKey | quote }}
{{- end }}
{{- if $root.Values.policy }}
- name: STREAM_POLICY_PATH
  value: {{ printf "%s/policy.toml" $paths.policy | quote }}
{{- end }}
- name: STREAM_PARTITIONS
  value: {{ $root.Values.topics.partitions | quote }}
- name: STREAM_REPLICATION_FACTOR
  value: {{ $root.Values.topics.replicationFactor | quote }}
- name: STREAM_GROUP_ID
  value: {{ $root.Values.worker.groupId | quote }}
- name: STREAM_LOG_FORMAT
  value: {{ $root.Values.worker.logFormat | quote }}
{{- range (include "ef.topics" $root | fromYaml).topics }}
{{- if .renamed }}
- name: {{ .env }}
  value: {{ .name | quote }}
{{- end }}
{{- end }}
{{- end -}}

{{/* Mounts of the secrets and the policy: (dict "root" $ "component" ... "values" ...) */}}
{{- define "ef.secretMounts" -}}
{{- $root := .root -}}
{{- $paths := include "ef.paths" $root | fromYaml -}}
{{- $creds := include "ef.credentials" . | fromYaml -}}
- name: tmp
  mountPath: /tmp
{{- if and $root.Values.pseudonymKey.existingSecret (ne .component "canary") }}
- name: pseudonym-key
  mountPath: {{ $paths.pseudonymKey }}
  readOnly: true
{{- end }}
{{- if and (eq .component "verifier") $root.Values.pseudonymKey.previousSecret.name }}
- name: previous-pseudonym-key
  mountPath: {{ $paths.previousPseudonymKey }}
  readOnly: true
{{- end }}
{{- if $root.Values.policy }}
- name: policy
  mountPath: {{ $paths.policy }}
  readOnly: true
{{- end }}
{{- if and (include "ef.usesTls" $root) (include "ef.caSecret" $root) }}
- name: kafka-ca
  mountPath: {{ $paths.ca }}
  readOnly: true
{{- end }}
{{- if $creds.saslPasswordSecret }}
- name: kafka-sasl
  mountPath: {{ $paths.sasl }}
  readOnly: true
{{- end }}
{{- if $creds.tlsClientSecret }}
- name: kafka-client
  mountPath: {{ $paths.tlsClient }}
  readOnly: true
{{- end }}
{{- end -}}

{{/* Volumes of the secrets (mode 0440: the user and fsGroup 10001 read them) and the policy. */}}
{{- define "ef.secretVolumes" -}}
{{- $root := .root -}}
{{- $creds := include "ef.credentials" . | fromYaml -}}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- if and $root.Values.pseudonymKey.existingSecret (ne .component "canary") }}
- name: pseudonym-key
  secret:
    secretName: {{ $root.Values.pseudonymKey.existingSecret }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.pseudonymKey.key }}
        path: key
{{- end }}
{{- if and (eq .component "verifier") $root.Values.pseudonymKey.previousSecret.name }}
- name: previous-pseudonym-key
  secret:
    secretName: {{ $root.Values.pseudonymKey.previousSecret.name }}
    defaultMode: 0440
    items:
      - key: {{ $root.Values.pseudonymKey.previousSecret.key }}
        path: key
{{- end }}
{{- if $root.Values.policy }}
- name: policy
  configMap:
    name: {{ include "ef.fullname" $root }}-policy
{{- end }}
{{- with (include "ef.caSecret" $root | fromYaml) }}
{{- if .name }}
- name: kafka-ca
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: ca.crt
{{- end }}
{{- end }}
{{- with $creds.saslPasswordSecret }}
- name: kafka-sasl
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .key }}
        path: password
{{- end }}
{{- with $creds.tlsClientSecret }}
- name: kafka-client
  secret:
    secretName: {{ .name }}
    defaultMode: 0440
    items:
      - key: {{ .certKey }}
        path: tls.crt
      - key: {{ .keyKey }}
        path: tls.key
{{- end }}
{{- end -}}
