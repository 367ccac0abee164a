{{- define "chat.name" -}}{{ .Release.Name }}-baby-discord{{- end -}}

{{- define "chat.labels" -}}
app.kubernetes.io/name: baby-discord
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "chat.selector" -}}
app.kubernetes.io/name: baby-discord
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "chat.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
postgres://chat:{{ .Values.postgresql.password }}@{{ .Release.Name }}-postgres:5432/chat
{{- else -}}
{{ required "externalDatabase.url is required when postgresql.enabled is false" .Values.externalDatabase.url }}
{{- end -}}
{{- end -}}

{{- define "chat.valkeyUrl" -}}
{{- if .Values.valkey.enabled -}}
redis://{{ .Release.Name }}-valkey:6379
{{- else -}}
{{ required "externalValkey.url is required when valkey.enabled is false" .Values.externalValkey.url }}
{{- end -}}
{{- end -}}
