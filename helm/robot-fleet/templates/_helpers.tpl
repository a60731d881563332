{{/* Labels shared by every object of the release. */}}
{{- define "robot-fleet.commonLabels" -}}
app.kubernetes.io/part-of: robot-fleet
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Selector labels of one service; call with (dict "root" $ "name" $name). */}}
{{- define "robot-fleet.selectorLabels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
{{- end -}}

{{- define "robot-fleet.labels" -}}
app.kubernetes.io/name: {{ .name }}
app.kubernetes.io/component: {{ .name }}
{{ include "robot-fleet.commonLabels" .root }}
{{- end -}}

{{/* Image reference of one service: <repository>/<name>@digest or :tag. */}}
{{- define "robot-fleet.image" -}}
{{- $img := .root.Values.image -}}
{{- if $img.digest -}}
{{ printf "%s/%s@%s" $img.repository .name $img.digest }}
{{- else -}}
{{ printf "%s/%s:%s" $img.repository .name $img.tag }}
{{- end -}}
{{- end -}}

{{/* The service's YAML configuration file (keys of services/<name>/<name>.yaml). */}}
{{- define "robot-fleet.config" -}}
{{- $v := .root.Values -}}
log:
  level: {{ $v.logLevel }}
http:
  bind: 0.0.0.0
  port: {{ .svc.port }}
kafka:
  bootstrap_servers: {{ $v.kafka.bootstrapServers | quote }}
  create_topics: {{ and $v.kafka.createTopics (not $v.kafkaTopics.enabled) }}
  topic_partitions: {{ $v.kafka.topicPartitions }}
{{- if $v.kafka.properties }}
  properties:
{{- range $k, $val := $v.kafka.properties }}
    {{ $k }}: {{ $val | quote }}
{{- end }}
{{- else }}
  properties: {}
{{- end }}
redis:
  url: {{ $v.redis.url | quote }}
shutdown:
  timeout_s: 25
{{- end -}}

{{/* Environment of one service container: Secret references and extra env. */}}
{{- define "robot-fleet.env" -}}
{{- $ := .root }}{{- $svc := .svc }}
{{- if $.Values.redis.urlSecret.name }}
- name: REDIS_URL
  valueFrom:
    secretKeyRef: {name: {{ $.Values.redis.urlSecret.name }}, key: {{ $.Values.redis.urlSecret.key }}}
{{- end }}
{{- if $svc.needsSecretsKey }}
- name: SECRETS_KEY
  valueFrom:
    secretKeyRef: {name: {{ $.Values.secrets.name }}, key: {{ $.Values.secrets.secretsKeyKey }}}
{{- end }}
{{- if $svc.kongIngress }}
- name: GATEWAY_TOKEN
  valueFrom:
    secretKeyRef: {name: {{ $.Values.secrets.name }}, key: {{ $.Values.secrets.gatewayTokenKey }}}
# reached only through Kong: refuse requests that come around it
- name: GATEWAY_REQUIRE_IDENTITY
  value: "true"
{{- end }}
{{- if and $svc.callsVendor $.Values.secrets.vendorTokens.name }}
{{- range $.Values.secrets.vendorTokens.keys }}
- name: {{ . }}
  valueFrom:
    secretKeyRef: {name: {{ $.Values.secrets.vendorTokens.name }}, key: {{ . }}}
{{- end }}
{{- end }}
{{- range $k, $v := $svc.env }}
- name: {{ $k }}
  value: {{ $v | quote }}
{{- end }}
{{- end -}}
