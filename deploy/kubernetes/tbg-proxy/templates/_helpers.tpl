{{- define "tbg.name" -}}{{ .Release.Name }}-tbg-proxy{{- end -}}
{{- define "tbg.labels" -}}
app.kubernetes.io/name: tbg-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "tbg.selector" -}}
app.kubernetes.io/name: tbg-proxy
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}
{{- define "tbg.vllmService" -}}{{ .Values.vllm.headlessService.name | default (printf "%s-vllm-pods" .Release.Name) }}{{- end -}}
