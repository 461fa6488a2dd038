{{/* Names and labels shared by every object of the release. */}}
{{- define "turnout.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "turnout.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one component: include "turnout.selector" (list . "service") */}}
{{- define "turnout.selector" -}}
{{- $root := index . 0 -}}
app.kubernetes.io/name: {{ $root.Chart.Name }}
app.kubernetes.io/instance: {{ $root.Release.Name }}
app.kubernetes.io/component: {{ index . 1 }}
{{- end -}}

{{- define "turnout.image" -}}
{{ printf "%s:%s" .Values.image.repository .Values.image.tag | quote }}
{{- end -}}

{{/* Environment of every Turnout container: where Kafka and ClickHouse are, and the secrets. */}}
{{- define "turnout.env" -}}
- name: TURNOUT_EVENTS__BOOTSTRAP_SERVERS
  value: {{ .Values.kafka.bootstrapServers | quote }}
- name: TURNOUT_STORAGE__CLICKHOUSE_DSN
  value: {{ .Values.clickhouse.dsn | quote }}
- name: TURNOUT_STORAGE__CLICKHOUSE_DATABASE
  value: {{ .Values.clickhouse.database | quote }}
- name: TURNOUT_CLICKHOUSE_USER
  value: {{ .Values.clickhouse.user | quote }}
- name: TURNOUT_CLICKHOUSE_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.clickhouse.passwordSecret.name }}
      key: {{ .Values.clickhouse.passwordSecret.key }}
{{- range .Values.providerKeys }}
- name: {{ .env }}
  valueFrom:
    secretKeyRef:
      name: {{ .secretName }}
      key: {{ .secretKey }}
{{- end }}
{{- end -}}

{{/* The config file and the data directory (the producer's spill journal). */}}
{{- define "turnout.volumeMounts" -}}
- name: config
  mountPath: /etc/turnout
  readOnly: true
- name: data
  mountPath: /var/lib/turnout
{{- end -}}

{{- define "turnout.volumes" -}}
- name: config
  configMap:
    name: {{ include "turnout.fullname" . }}
- name: data
  emptyDir: {}
{{- end -}}
