{{/* Chart name, truncated to 63 characters. */}}
{{- define "cliproxy.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified app name: <release>-<chart>, or the release name if it already holds the chart name. */}}
{{- define "cliproxy.fullname" -}}
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

{{- define "cliproxy.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels; call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "cliproxy.selectorLabels" -}}
app.kubernetes.io/name: {{ include "cliproxy.name" .ctx }}
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* Standard labels; call with (dict "ctx" $ "component" "proxy"). */}}
{{- define "cliproxy.labels" -}}
helm.sh/chart: {{ include "cliproxy.chart" .ctx }}
{{ include "cliproxy.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
app.kubernetes.io/part-of: cliproxy
{{- with .ctx.Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Image of one component; call with (dict "ctx" $ "component" "proxy"). Defaults come from images.env. */}}
{{- define "cliproxy.image" -}}
{{- $image := index .ctx.Values.image .component }}
{{- $defaults := .ctx.Files.Get "images.env" }}
{{- $repository := $image.repository | default (include "cliproxy.imagesEnv" (dict "text" $defaults "key" (printf "%s_IMAGE" (upper .component)))) }}
{{- $tag := $image.tag | default (include "cliproxy.imagesEnv" (dict "text" $defaults "key" "IMAGE_TAG")) }}
{{- if not (and $repository $tag) }}
{{- fail (printf "no image for the %s: set image.%s.repository and tag (images.env is missing from the chart)" .component .component) }}
{{- end }}
{{- printf "%s:%s" $repository $tag }}
{{- end }}

{{/* One KEY=value line of images.env; call with (dict "text" <file> "key" "IMAGE_TAG"). */}}
{{- define "cliproxy.imagesEnv" -}}
{{- regexFind (printf "(?m)^%s=.*$" .key) .text | trimPrefix (printf "%s=" .key) | trim }}
{{- end }}

{{- define "cliproxy.operator.fullname" -}}
{{- printf "%s-operator" (include "cliproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cliproxy.proxy.fullname" -}}
{{- printf "%s-proxy" (include "cliproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "cliproxy.operator.serviceAccountName" -}}
{{- if .Values.operator.serviceAccount.create }}
{{- default (include "cliproxy.operator.fullname" .) .Values.operator.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.operator.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "cliproxy.proxy.serviceAccountName" -}}
{{- if .Values.proxy.serviceAccount.create }}
{{- default (include "cliproxy.proxy.fullname" .) .Values.proxy.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.proxy.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* Name of the ConfigMap and Secret the operator renders for the proxy's gateway. */}}
{{- define "cliproxy.gatewayObjectName" -}}
{{- printf "cliproxy-%s" .Values.proxy.gateway }}
{{- end }}

{{/* Namespaces the operator watches when namespaced. */}}
{{- define "cliproxy.operator.watchNamespaces" -}}
{{- if .Values.operator.watchNamespaces }}
{{- toJson .Values.operator.watchNamespaces }}
{{- else }}
{{- toJson (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* The operator's least-privilege rules, read verbatim from files/operator-rbac.yaml (= deploy/rbac/operator.yaml). */}}
{{- define "cliproxy.operator.rules" -}}
{{- (.Files.Get "files/operator-rbac.yaml" | fromYaml).rules | toYaml }}
{{- end }}

{{/* The operator's rules for a namespaced Role: the cluster-scoped resources (namespaces, CRDs, cluster peerings)
mean nothing in a Role, and the namespaced operator does not ask for them (kopf's scanning is off there). */}}
{{- define "cliproxy.operator.namespacedRules" -}}
{{- $clusterScoped := list "namespaces" "customresourcedefinitions" "clusterkopfpeerings" -}}
{{- $rules := list -}}
{{- range ($.Files.Get "files/operator-rbac.yaml" | fromYaml).rules -}}
{{- $resources := list -}}
{{- range .resources -}}
{{- if not (has . $clusterScoped) }}{{ $resources = append $resources . }}{{ end -}}
{{- end -}}
{{- if $resources }}{{ $rules = append $rules (set (deepCopy .) "resources" $resources) }}{{ end -}}
{{- end -}}
{{- $rules | toYaml }}
{{- end }}

{{/* PromQL label matcher selecting this release's proxy pods. */}}
{{- define "cliproxy.proxy.promSelector" -}}
{{- printf "namespace=\"%s\",pod=~\"%s-.*\"" .Release.Namespace (include "cliproxy.proxy.fullname" .) }}
{{- end }}

{{/* The bundled Redis' name. */}}
{{- define "cliproxy.redis.fullname" -}}
{{- printf "%s-redis" (include "cliproxy.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The Redis the proxies share client limits in: redis.url, else the bundled one's Service, else empty. */}}
{{- define "cliproxy.redis.url" -}}
{{- if .Values.redis.url }}{{ .Values.redis.url }}
{{- else if .Values.redis.bundled.enabled }}redis://{{ include "cliproxy.redis.fullname" . }}.{{ .Release.Namespace }}.svc:6379/0
{{- end }}
{{- end }}

{{/* Env of the proxy and operator containers naming that Redis (read by cliproxy_proxy.limits and the operator's
usage reads); the password comes from redis.existingSecret, never from the values. */}}
{{- define "cliproxy.redis.env" -}}
{{- with include "cliproxy.redis.url" . }}
- name: CLIPROXY_REDIS_URL
  value: {{ . | quote }}
{{- if and $.Values.redis.cluster $.Values.redis.url }}
{{- if not (or (hasPrefix "redis://" $.Values.redis.url) (hasPrefix "rediss://" $.Values.redis.url)) }}
{{- fail "redis.cluster takes a redis:// or rediss:// url (one node of the cluster)" }}
{{- end }}
- name: CLIPROXY_REDIS_CLUSTER
  value: "true"
{{- end }}
{{- if and $.Values.redis.existingSecret $.Values.redis.url }}
- name: CLIPROXY_REDIS_PASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ $.Values.redis.existingSecret | quote }}
      key: {{ $.Values.redis.existingSecretKey | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The proxy's OTEL_* env (otel.enabled): the standard variables the OpenTelemetry SDK reads. The exporter's
headers (a collector's credentials) come from otel.headers.existingSecret, never from the values; the pod's own
name reaches the resource attributes through the downward API. */}}
{{- define "cliproxy.otel.env" -}}
{{- with .Values.otel }}
{{- if .enabled }}
- name: OTEL_TRACES_EXPORTER
  value: otlp
- name: OTEL_EXPORTER_OTLP_ENDPOINT
  value: {{ required "otel.enabled needs otel.endpoint (an OTLP/HTTP receiver's base URL)" .endpoint | quote }}
- name: OTEL_EXPORTER_OTLP_PROTOCOL
  value: {{ .protocol | quote }}
- name: OTEL_SERVICE_NAME
  value: {{ .serviceName | quote }}
- name: OTEL_K8S_POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- $attributes := list (printf "k8s.namespace.name=%s" $.Release.Namespace) "k8s.pod.name=$(OTEL_K8S_POD_NAME)" (printf "k8s.deployment.name=%s" (include "cliproxy.proxy.fullname" $)) }}
{{- range $key, $value := .resourceAttributes }}
{{- $attributes = append $attributes (printf "%s=%s" $key $value) }}
{{- end }}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ join "," $attributes | quote }}
- name: OTEL_TRACES_SAMPLER
  value: {{ .sampler.name | quote }}
{{- with .sampler.arg }}
- name: OTEL_TRACES_SAMPLER_ARG
  value: {{ . | quote }}
{{- end }}
{{- with .headers.existingSecret }}
- name: OTEL_EXPORTER_OTLP_HEADERS
  valueFrom:
    secretKeyRef:
      name: {{ . | quote }}
      key: {{ $.Values.otel.headers.existingSecretKey | quote }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
