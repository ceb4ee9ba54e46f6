{{- define "heterotrain.fullname" -}}
{{- printf "%s-operator" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- define "heterotrain.selectorLabels" -}}
app.kubernetes.io/name: heterotrain
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}
{{- define "heterotrain.labels" -}}
{{ include "heterotrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "heterotrain.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}
{{- define "heterotrain.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{ .Values.serviceAccount.name | default (include "heterotrain.fullname" .) }}
{{- else -}}
{{ .Values.serviceAccount.name | default "default" }}
{{- end -}}
{{- end -}}
{{/* Where the workers are: the watched namespace, or every namespace. */}}
{{- define "heterotrain.workerNamespaceSelector" -}}
{{- if .Values.watchNamespace }}
matchNames: [{{ .Values.watchNamespace | quote }}]
{{- else }}
any: true
{{- end }}
{{- end -}}
