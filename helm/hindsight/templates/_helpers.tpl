{{/* The Secret holding the admin token (and the webhook URL). */}}
{{- define "hindsight.secretName" -}}
{{- if .Values.adminToken.existingSecret -}}
{{ .Values.adminToken.existingSecret }}
{{- else -}}
{{ .Release.Name }}-hindsight-admin
{{- end -}}
{{- end -}}
