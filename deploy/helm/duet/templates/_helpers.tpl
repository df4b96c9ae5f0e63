{{/* Chart name. */}}
{{- define "duet.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name prefix of every object (release name, with the chart name unless it already holds it). */}}
{{- define "duet.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "duet.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Object names of the two parts (kept within 63 characters with their suffix). */}}
{{- define "duet.orchestrator.fullname" -}}
{{- printf "%s-orchestrator" (include "duet.fullname" . | trunc 50 | trimSuffix "-") }}
{{- end }}
{{- define "duet.triton.fullname" -}}
{{- printf "%s-triton" (include "duet.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{- define "duet.commonLabels" -}}
helm.sh/chart: {{ include "duet.chart" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: duet
{{- end }}

{{/* Labels of objects that belong to the whole release. */}}
{{- define "duet.labels" -}}
{{ include "duet.commonLabels" . }}
app.kubernetes.io/name: {{ include "duet.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of one part's objects and pods; `component` is orchestrator or triton. */}}
{{- define "duet.componentLabels" -}}
{{ include "duet.commonLabels" .ctx }}
{{ include "duet.selectorLabels" . }}
{{- end }}

{{/* Selector labels; `component` is orchestrator or triton. */}}
{{- define "duet.selectorLabels" -}}
app.kubernetes.io/name: {{ include "duet.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "duet.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "duet.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image: repository:tag (no registry host is assumed: the repository value carries it). */}}
{{- define "duet.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* Triton's gRPC address as the orchestrator dials it (host:port, no scheme: `DUET_TRITON__URL`). */}}
{{- define "duet.triton.grpcAddress" -}}
{{- printf "%s.%s.svc:%v" (include "duet.triton.fullname" .) .Release.Namespace .Values.triton.ports.grpc }}
{{- end }}
{{- define "duet.triton.httpAddress" -}}
{{- printf "%s.%s.svc:%v" (include "duet.triton.fullname" .) .Release.Namespace .Values.triton.ports.http }}
{{- end }}

{{/* The orchestrators' public URL: the value, else the in-cluster Service address. */}}
{{- define "duet.orchestrator.publicUrl" -}}
{{- if .Values.orchestrator.publicUrl }}
{{- .Values.orchestrator.publicUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "duet.orchestrator.fullname" .) .Release.Namespace .Values.orchestrator.httpPort }}
{{- end }}
{{- end }}
