{{/* The chart's name. */}}
{{- define "mergecluster.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Object name prefix: the release name, with the chart's name in front unless the release name holds it. */}}
{{- define "mergecluster.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Chart.Name .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Labels that select this release's pods. */}}
{{- define "mergecluster.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mergecluster.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/* Labels on every object. */}}
{{- define "mergecluster.labels" -}}
{{ include "mergecluster.selectorLabels" . }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "mergecluster.storageSecret" -}}
{{- default (printf "%s-storage" (include "mergecluster.fullname" .)) .Values.storage.existingSecret -}}
{{- end -}}

{{- define "mergecluster.dataClaim" -}}
{{- default (printf "%s-data" (include "mergecluster.fullname" .)) .Values.volume.existingClaim -}}
{{- end -}}

{{/* The restricted Pod Security Standard, for every container. */}}
{{- define "mergecluster.containerSecurityContext" -}}
readOnlyRootFilesystem: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
{{- end -}}
