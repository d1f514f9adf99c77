{{/* Names, labels and the pieces every workload shares. */}}

{{- define "meshtrain.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* RELEASE-meshtrain, or RELEASE when it already holds the chart name; 63 characters at most (a DNS label). */}}
{{- define "meshtrain.fullname" -}}
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

{{- define "meshtrain.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "meshtrain.labels" -}}
helm.sh/chart: {{ include "meshtrain.chart" . }}
{{ include "meshtrain.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: meshtrain
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Labels that never change over an object's life: Deployment selectors are immutable. */}}
{{- define "meshtrain.selectorLabels" -}}
app.kubernetes.io/name: {{ include "meshtrain.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* A component's selector labels: (dict "ctx" $ "component" "coordinator"). */}}
{{- define "meshtrain.componentSelectorLabels" -}}
{{ include "meshtrain.selectorLabels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* A component's object labels: (dict "ctx" $ "component" "agent"). */}}
{{- define "meshtrain.componentLabels" -}}
{{ include "meshtrain.labels" .ctx }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "meshtrain.coordinatorName" -}}
{{- printf "%s-coordinator" (include "meshtrain.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshtrain.gatewayName" -}}
{{- printf "%s-gateway" (include "meshtrain.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "meshtrain.agentsName" -}}
{{- printf "%s-agents" (include "meshtrain.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Secret holding the token and the gateway keys: the chart's own or auth.existingSecret. */}}
{{- define "meshtrain.secretName" -}}
{{- default (include "meshtrain.fullname" .) .Values.auth.existingSecret }}
{{- end }}

{{- define "meshtrain.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* http or https, for URLs and probes of the coordinator and gateway. */}}
{{- define "meshtrain.scheme" -}}
{{- if .Values.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/* The coordinator's in-cluster URL, which agents join and the gateway reads the registry from. */}}
{{- define "meshtrain.coordinatorURL" -}}
{{- printf "%s://%s.%s.svc:%v" (include "meshtrain.scheme" .) (include "meshtrain.coordinatorName" .) .Release.Namespace .Values.coordinator.service.port }}
{{- end }}

{{/* MESHTRAIN_TOKEN from the Secret: the programs read it from the environment, so it is never in args. */}}
{{- define "meshtrain.tokenEnv" -}}
- name: MESHTRAIN_TOKEN
  valueFrom:
    secretKeyRef:
      name: {{ include "meshtrain.secretName" . }}
      key: token
{{- end }}

{{- define "meshtrain.tlsDir" -}}/etc/meshtrain/tls{{- end }}

{{/* TLS flags: (dict "ctx" $ "serve" true "ca" true) adds --tls-cert/--tls-key, and --ca when tls.caKey is set
     (the coordinator has no --ca: it gets NODE_EXTRA_CA_CERTS instead, meshtrain.caEnv). */}}
{{- define "meshtrain.tlsArgs" -}}
{{- $tls := .ctx.Values.tls }}
{{- if $tls.enabled }}
{{- if .serve }}
- --tls-cert
- {{ include "meshtrain.tlsDir" . }}/tls.crt
- --tls-key
- {{ include "meshtrain.tlsDir" . }}/tls.key
{{- end }}
{{- if and .ca $tls.caKey }}
- --ca
- {{ include "meshtrain.tlsDir" . }}/{{ $tls.caKey }}
{{- end }}
{{- end }}
{{- end }}

{{/* The CA for Node's own TLS clients where a program has no --ca flag: the coordinator relays the dashboard's
     calls to https:// gateways. */}}
{{- define "meshtrain.caEnv" -}}
{{- if and .Values.tls.enabled .Values.tls.caKey }}
- name: NODE_EXTRA_CA_CERTS
  value: {{ include "meshtrain.tlsDir" . }}/{{ .Values.tls.caKey }}
{{- end }}
{{- end }}

{{- define "meshtrain.tlsVolumeMount" -}}
{{- if .Values.tls.enabled }}
- name: tls
  mountPath: {{ include "meshtrain.tlsDir" . }}
  readOnly: true
{{- end }}
{{- end }}

{{- define "meshtrain.tlsVolume" -}}
{{- if .Values.tls.enabled }}
- name: tls
  secret:
    secretName: {{ required "tls.secretName is required when tls.enabled" .Values.tls.secretName }}
    defaultMode: 0440
{{- end }}
{{- end }}

{{/* A pod's annotations block, or nothing: the prometheus.io ones for Prometheus' kubernetes-pods scrape job (when
     metrics.podAnnotations) and the pod's own. (dict "ctx" $ "port" 7070 "tls" bool "extra" .podAnnotations) */}}
{{- define "meshtrain.podAnnotations" -}}
{{- $a := dict }}
{{- if .ctx.Values.metrics.podAnnotations }}
{{- $_ := set $a "prometheus.io/scrape" "true" }}
{{- $_ = set $a "prometheus.io/port" (toString (int .port)) }}
{{- $_ = set $a "prometheus.io/path" "/metrics" }}
{{- $_ = set $a "prometheus.io/scheme" (ternary "https" "http" .tls) }}
{{- end }}
{{- with .extra }}
{{- $a = merge (deepCopy .) $a }}
{{- end }}
{{- with $a -}}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The pod-level pieces every workload shares: pull secrets and the security context. */}}
{{- define "meshtrain.podCommon" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
automountServiceAccountToken: false
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* The container-level pieces: image and security context. */}}
{{- define "meshtrain.containerCommon" -}}
image: {{ include "meshtrain.image" . }}
imagePullPolicy: {{ .Values.image.pullPolicy }}
securityContext:
  {{- toYaml .Values.securityContext | nindent 2 }}
{{- end }}
