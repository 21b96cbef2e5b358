{{/* Names, labels and the pieces every pod shares. */}}

{{- define "hpcinsight.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "hpcinsight.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: hpcinsight
{{- end -}}

{{/* selector labels of one component: (dict "root" $ "component" "worker") */}}
{{- define "hpcinsight.selector" -}}
app.kubernetes.io/name: {{ .root.Chart.Name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{- define "hpcinsight.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- define "hpcinsight.agentNamespace" -}}
{{- .Values.agent.namespace | default .Release.Namespace -}}
{{- end -}}

{{/* Cross-field checks values.schema.json cannot say; each names the value. */}}
{{- define "hpcinsight.validate" -}}
{{- $k := .Values.kafka -}}
{{- if hasPrefix "SASL" $k.securityProtocol -}}
{{- if not $k.sasl.username -}}{{- fail (printf "kafka.sasl.username is required with kafka.securityProtocol=%s" $k.securityProtocol) -}}{{- end -}}
{{- if not $k.sasl.passwordSecret.name -}}{{- fail (printf "kafka.sasl.passwordSecret.name is required with kafka.securityProtocol=%s: the name of an existing Secret holding the SASL password (never a plain value)" $k.securityProtocol) -}}{{- end -}}
{{- end -}}
{{- if and $k.tls.clientSecret.name (not (has $k.securityProtocol (list "SSL" "SASL_SSL"))) -}}
{{- fail (printf "kafka.tls.clientSecret is set (mutual TLS) but kafka.securityProtocol is %s: use SSL or SASL_SSL" $k.securityProtocol) -}}
{{- end -}}
{{- if and .Values.alerts.enabled (not .Values.alerts.config) -}}
{{- fail "alerts.config is required with alerts.enabled: the routing YAML (docs/alerts.md); put webhook URLs in an existing Secret named by alerts.envFromSecret and refer to them as ${VAR}" -}}
{{- end -}}
{{- if and .Values.metrics.prometheusRule.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.prometheusRule.enabled needs metrics.enabled: its alerts read the components' /metrics" -}}
{{- end -}}
{{- if and .Values.metrics.serviceMonitor.enabled (not .Values.metrics.enabled) -}}
{{- fail "metrics.serviceMonitor.enabled needs metrics.enabled" -}}
{{- end -}}
{{- end -}}

{{/* The restricted Pod Security profile: every pod but the agent. */}}
{{- define "hpcinsight.restrictedPod" -}}
runAsNonRoot: true
runAsUser: 10001
runAsGroup: 10001
fsGroup: 10001
seccompProfile:
  type: RuntimeDefault
{{- end -}}
{{- define "hpcinsight.restrictedContainer" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
runAsNonRoot: true
capabilities:
  drop: ["ALL"]
seccompProfile:
  type: RuntimeDefault
{{- end -}}

{{/* Settings from the ConfigMap, secrets as files from existing Secrets (the *_FILE variables). */}}
{{- define "hpcinsight.env" -}}
- name: HPCINSIGHT_CONFIG
  value: /etc/hpcinsight/config/config.toml
{{- if .Values.kafka.sasl.passwordSecret.name }}
- name: KAFKA_SASL_PASSWORD_FILE
  value: /etc/hpcinsight/secrets/kafka-sasl/{{ .Values.kafka.sasl.passwordSecret.key }}
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: KAFKA_SSL_CAFILE
  value: /etc/hpcinsight/secrets/kafka-ca/{{ .Values.kafka.tls.caSecret.key }}
{{- end }}
{{- if .Values.kafka.tls.clientSecret.name }}
- name: KAFKA_SSL_CERTFILE
  value: /etc/hpcinsight/secrets/kafka-client/{{ .Values.kafka.tls.clientSecret.certKey }}
- name: KAFKA_SSL_KEYFILE
  value: /etc/hpcinsight/secrets/kafka-client/{{ .Values.kafka.tls.clientSecret.keyKey }}
{{- end }}
{{- end -}}

{{/* ClickHouse password: only the components that open the store get it. */}}
{{- define "hpcinsight.clickhouseEnv" -}}
{{- if .Values.clickhouse.passwordSecret.name }}
- name: CLICKHOUSE_PASSWORD_FILE
  value: /etc/hpcinsight/secrets/clickhouse/{{ .Values.clickhouse.passwordSecret.key }}
{{- end }}
{{- end -}}

{{- define "hpcinsight.volumeMounts" -}}
- name: config
  mountPath: /etc/hpcinsight/config
  readOnly: true
{{- if .Values.kafka.sasl.passwordSecret.name }}
- name: kafka-sasl
  mountPath: /etc/hpcinsight/secrets/kafka-sasl
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  mountPath: /etc/hpcinsight/secrets/kafka-ca
  readOnly: true
{{- end }}
{{- if .Values.kafka.tls.clientSecret.name }}
- name: kafka-client
  mountPath: /etc/hpcinsight/secrets/kafka-client
  readOnly: true
{{- end }}
- name: tmp
  mountPath: /tmp
{{- end -}}

{{- define "hpcinsight.volumes" -}}
- name: config
  configMap:
    name: {{ include "hpcinsight.fullname" . }}{{ .configMapSuffix | default "" }}
{{- if .Values.kafka.sasl.passwordSecret.name }}
- name: kafka-sasl
  secret:
    secretName: {{ .Values.kafka.sasl.passwordSecret.name }}
    items: [{key: {{ .Values.kafka.sasl.passwordSecret.key | quote }}, path: {{ .Values.kafka.sasl.passwordSecret.key | quote }}}]
{{- end }}
{{- if .Values.kafka.tls.caSecret.name }}
- name: kafka-ca
  secret:
    secretName: {{ .Values.kafka.tls.caSecret.name }}
    items: [{key: {{ .Values.kafka.tls.caSecret.key | quote }}, path: {{ .Values.kafka.tls.caSecret.key | quote }}}]
{{- end }}
{{- if .Values.kafka.tls.clientSecret.name }}
- name: kafka-client
  secret:
    secretName: {{ .Values.kafka.tls.clientSecret.name }}
    items:
      - {key: {{ .Values.kafka.tls.clientSecret.certKey | quote }}, path: {{ .Values.kafka.tls.clientSecret.certKey | quote }}}
      - {key: {{ .Values.kafka.tls.clientSecret.keyKey | quote }}, path: {{ .Values.kafka.tls.clientSecret.keyKey | quote }}}
{{- end }}
- name: tmp
  emptyDir:
    sizeLimit: 256Mi
{{- end -}}

{{- define "hpcinsight.clickhouseMount" -}}
{{- if .Values.clickhouse.passwordSecret.name }}
- name: clickhouse
  mountPath: /etc/hpcinsight/secrets/clickhouse
  readOnly: true
{{- end }}
{{- end -}}
{{- define "hpcinsight.clickhouseVolume" -}}
{{- if .Values.clickhouse.passwordSecret.name }}
- name: clickhouse
  secret:
    secretName: {{ .Values.clickhouse.passwordSecret.name }}
    items: [{key: {{ .Values.clickhouse.passwordSecret.key | quote }}, path: {{ .Values.clickhouse.passwordSecret.key | quote }}}]
{{- end }}
{{- end -}}

{{/* the metrics endpoint's arguments and container port (metrics.enabled) */}}
{{- define "hpcinsight.metricsArgs" -}}
{{- if .Values.metrics.enabled }}
- --metrics-host=0.0.0.0
- --metrics-port={{ .Values.metrics.port }}
{{- end }}
{{- end -}}
{{- define "hpcinsight.metricsPort" -}}
{{- if .Values.metrics.enabled }}
- name: metrics
  containerPort: {{ .Values.metrics.port }}
  protocol: TCP
{{- end }}
{{- end -}}

{{/* pod-level settings common to every Deployment */}}
{{- define "hpcinsight.podCommon" -}}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end -}}
