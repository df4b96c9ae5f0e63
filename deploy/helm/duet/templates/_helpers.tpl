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

{{/* The Triton ClusterIP Service's gRPC and HTTP addresses (host:port, no scheme). */}}
{{- define "duet.triton.grpcAddress" -}}
{{- printf "%s.%s.svc:%v" (include "duet.triton.fullname" .) .Release.Namespace .Values.triton.ports.grpc }}
{{- end }}
{{- define "duet.triton.httpAddress" -}}
{{- printf "%s.%s.svc:%v" (include "duet.triton.fullname" .) .Release.Namespace .Values.triton.ports.http }}
{{- end }}

{{/* The Triton StatefulSet; its pods are `<this>-0`, `<this>-1`, ... Kept within 52 characters (the triton
fullname's, unless the release name is long): the controller labels each pod with `<this>-<revision hash>`, and
that label value, like a pod's host name, has 63 at most. */}}
{{- define "duet.triton.statefulsetName" -}}
{{- printf "%s-triton" (include "duet.fullname" . | trunc 45 | trimSuffix "-") }}
{{- end }}

{{/* The headless Service that governs it: each pod's DNS name is `<pod>.<this>.<namespace>.svc.<clusterDomain>`. */}}
{{- define "duet.triton.podsServiceName" -}}
{{- printf "%s-pods" (include "duet.triton.statefulsetName" .) }}
{{- end }}

{{/* How many Triton pods the orchestrators get addresses of: `triton.replicas`, or the Triton HPA's
`maxReplicas` when it scales Triton (a pod that does not exist yet is out of the orchestrators' rotation, its
name unresolved, until it does). */}}
{{- define "duet.triton.endpointCount" -}}
{{- if and .Values.autoscaling.enabled .Values.autoscaling.triton.enabled }}
{{- int .Values.autoscaling.triton.maxReplicas }}
{{- else }}
{{- int .Values.triton.replicas }}
{{- end }}
{{- end }}

{{/* Every Triton pod's gRPC address, comma-separated (`DUET_TRITON__URL`: the orchestrator sends each call to
the least loaded server in rotation): `<statefulset>-<i>.<headless service>.<namespace>.svc.<clusterDomain>:<grpc>`
for i in 0 .. endpointCount-1. */}}
{{- define "duet.triton.podGrpcAddresses" -}}
{{- $n := int (include "duet.triton.endpointCount" .) }}
{{- if lt $n 1 }}
{{- fail "triton.endpoints perPod: no Triton pod to address (triton.replicas, or autoscaling.triton.maxReplicas, is below 1)" }}
{{- end }}
{{- $domain := required "clusterDomain: the cluster's DNS domain (cluster.local unless yours differs)" .Values.clusterDomain | trimSuffix "." }}
{{- $sts := include "duet.triton.statefulsetName" . }}
{{- $svc := include "duet.triton.podsServiceName" . }}
{{- $addresses := list }}
{{- range $i := until $n }}
{{- $addresses = append $addresses (printf "%s-%d.%s.%s.svc.%s:%v" $sts $i $svc $.Release.Namespace $domain $.Values.triton.ports.grpc) }}
{{- end }}
{{- join "," $addresses }}
{{- end }}

{{/* The headless Service's name as a DNS target (`dns:///NAME:PORT`): the orchestrators resolve it again and again
and call every address it gives (each Triton pod). */}}
{{- define "duet.triton.dnsTarget" -}}
{{- $domain := required "clusterDomain: the cluster's DNS domain (cluster.local unless yours differs)" .Values.clusterDomain | trimSuffix "." }}
{{- printf "dns:///%s.%s.svc.%s:%v" (include "duet.triton.podsServiceName" .) .Release.Namespace $domain .Values.triton.ports.grpc }}
{{- end }}

{{/* What the orchestrators dial (`DUET_TRITON__URL`), by `triton.endpoints`: the headless Service's name, re-resolved
(`dns`); every Triton pod's own name (`perPod`); or the ClusterIP Service's one address (`service`), on which one
gRPC channel stays with one pod. */}}
{{- define "duet.triton.grpcUrl" -}}
{{- $mode := .Values.triton.endpoints }}
{{- if eq $mode "dns" }}
{{- include "duet.triton.dnsTarget" . }}
{{- else if eq $mode "perPod" }}
{{- include "duet.triton.podGrpcAddresses" . }}
{{- else if eq $mode "service" }}
{{- include "duet.triton.grpcAddress" . }}
{{- else }}
{{- fail (printf "triton.endpoints: %v is not one of dns, perPod, service" $mode) }}
{{- end }}
{{- end }}

{{/* The orchestrators' public URL: the value, else the in-cluster Service address. */}}
{{- define "duet.orchestrator.publicUrl" -}}
{{- if .Values.orchestrator.publicUrl }}
{{- .Values.orchestrator.publicUrl }}
{{- else }}
{{- printf "http://%s.%s.svc:%v" (include "duet.orchestrator.fullname" .) .Release.Namespace .Values.orchestrator.httpPort }}
{{- end }}
{{- end }}
