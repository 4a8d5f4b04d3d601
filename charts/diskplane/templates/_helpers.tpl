{{- define "diskplane.fullname" -}}
{{- printf "%s-diskplane" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "diskplane.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "diskplane.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "diskplane.labels" -}}
app.kubernetes.io/name: diskplane
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/part-of: diskplane
{{- end -}}
