{{/* The chat server's name: <release>-baby-discord, or the overrides; at most 63 characters
(Kubernetes names and label values), leaving room for the longest suffix used ("-postgres"). */}}
{{- define "chat.name" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 54 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name (default "baby-discord" .Values.nameOverride) | trunc 54 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "chat.postgresName" -}}{{ include "chat.name" . }}-postgres{{- end -}}
{{- define "chat.valkeyName" -}}{{ include "chat.name" . }}-valkey{{- end -}}

{{- define "chat.labels" -}}
app.kubernetes.io/name: baby-discord
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | trunc 63 | trimSuffix "-" }}
{{- end -}}

{{- define "chat.selector" -}}
app.kubernetes.io/name: baby-discord
app.kubernetes.io/instance: {{ .Release.Name | trunc 63 | trimSuffix "-" }}
app.kubernetes.io/component: server
{{- end -}}

{{- define "chat.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{/* A password the chart generates once: the one in the Secret already installed, else a new
random one. (Under `helm template`, as Tilt renders, there is nothing to look up: set one.) */}}
{{- define "chat.generated" -}}
{{- $secret := lookup "v1" "Secret" .context.Release.Namespace .secret -}}
{{- if and $secret (index $secret.data .key) -}}
{{- index $secret.data .key | b64dec -}}
{{- else -}}
{{- randAlphaNum 32 -}}
{{- end -}}
{{- end -}}

{{/* The Secret holding the database password, and its key. */}}
{{- define "chat.databaseSecret" -}}
{{- if .Values.postgresql.enabled -}}
{{- .Values.postgresql.auth.existingSecret | default (include "chat.postgresName" .) -}}
{{- else -}}
{{- .Values.externalDatabase.existingSecret | default (include "chat.name" .) -}}
{{- end -}}
{{- end -}}

{{/* DATABASE_URL without its password (which travels as PGPASSWORD). */}}
{{- define "chat.databaseUrl" -}}
{{- if .Values.postgresql.enabled -}}
postgres://{{ .Values.postgresql.auth.username }}@{{ include "chat.postgresName" . }}:5432/{{ .Values.postgresql.auth.database }}
{{- else -}}
{{ required "externalDatabase.url is required when postgresql.enabled is false" .Values.externalDatabase.url }}
{{- end -}}
{{- end -}}

{{/* The Secret holding the Valkey URL (key `url`; and for the in-cluster Valkey, `password`). */}}
{{- define "chat.valkeySecret" -}}
{{- if .Values.valkey.enabled -}}
{{- .Values.valkey.auth.existingSecret | default (include "chat.valkeyName" .) -}}
{{- else -}}
{{- .Values.externalValkey.existingSecret | default (include "chat.name" .) -}}
{{- end -}}
{{- end -}}

{{/* The environment every container of the chat server gets: settings, and the credentials. */}}
{{- define "chat.env" -}}
- name: DATABASE_URL
  value: {{ include "chat.databaseUrl" . | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ include "chat.databaseSecret" . }}
      key: password
- name: VALKEY_URL
  valueFrom:
    secretKeyRef:
      name: {{ include "chat.valkeySecret" . }}
      key: url
{{- end -}}
