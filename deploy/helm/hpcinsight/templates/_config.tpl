{{/* The ConfigMap's data: config.toml (HPCINSIGHT_CONFIG: every setting but the secrets, which
come as files) and the alert routing. */}}
{{- define "hpcinsight.configData" -}}
config.toml: |
  kafka_bootstrap = {{ .Values.kafka.bootstrap | quote }}
  kafka_security_protocol = {{ .Values.kafka.securityProtocol | quote }}
  hpcinsight_topic_prefix = {{ .Values.kafka.topicPrefix | quote }}
  {{- with .Values.kafka.topicPartitions }}
  hpcinsight_topic_partitions = {{ . }}
  {{- end }}
  {{- if hasPrefix "SASL" .Values.kafka.securityProtocol }}
  kafka_sasl_mechanism = {{ .Values.kafka.sasl.mechanism | quote }}
  kafka_sasl_username = {{ .Values.kafka.sasl.username | quote }}
  {{- end }}
  clickhouse_url = {{ .Values.clickhouse.url | quote }}
  clickhouse_user = {{ .Values.clickhouse.user | quote }}
  hpcinsight_data_dir = "/var/lib/hpcinsight"

  [clickhouse]
  {{- with .Values.clickhouse.cluster }}
  cluster = {{ . | quote }}
  {{- end }}
  {{- with .Values.clickhouse.replicaPath }}
  replica_path = {{ . | quote }}
  {{- end }}
  {{- with .Values.clickhouse.replicaName }}
  replica_name = {{ . | quote }}
  {{- end }}
  {{- if .Values.clickhouse.ttlDays }}

  [clickhouse.ttl_days]
  {{- range $table, $days := .Values.clickhouse.ttlDays }}
  {{ $table }} = {{ $days | int }}
  {{- end }}
  {{- end }}
  {{- if .Values.detectors }}

  {{- toToml (dict "detectors" .Values.detectors) | nindent 2 }}
  {{- end }}
{{- if .Values.alerts.enabled }}
alerts.yaml: |
  {{- toYaml .Values.alerts.config | nindent 2 }}
{{- end }}
{{- end -}}
