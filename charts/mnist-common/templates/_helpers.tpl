{{/* Chart name, truncated to fit label values. */}}
{{- define "mnist-common.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the RayJob's or RayService's name. KubeRay derives the RayCluster, Service and submitter
Job names from it and adds a suffix (RayService names may have 47 characters), so it stays at 40 characters to keep
every derived name under the 63-character limit.
*/}}
{{- define "mnist-common.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "mnist-common.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "mnist-common.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnist-common.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels for every object. */}}
{{- define "mnist-common.labels" -}}
helm.sh/chart: {{ include "mnist-common.chart" . }}
{{ include "mnist-common.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mnist-train
{{- end }}

{{/* Image reference: <repository>@<digest> when pinned by digest, else a tag that follows the GPU switch. */}}
{{- define "mnist-common.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $flavor := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Ray version of the image (Chart.yaml annotation ray.io/version): the RayCluster's rayVersion. */}}
{{- define "mnist-common.rayVersion" -}}
{{- index .Chart.Annotations "ray.io/version" }}
{{- end }}

{{/* Ray's object store in bytes for a /dev/shm size such as 512Mi or 2Gi: 70% of it. */}}
{{- define "mnist-common.objectStoreBytes" -}}
{{- $number := regexFind "^[0-9]+" . }}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" .) }}
{{- div (mul (int64 $number) $unit 7) 10 }}
{{- end }}

{{/*
The CPUs Ray sees on a worker pod: KubeRay's rule (the container's CPU limit, else its request, rounded up). The
chart also passes it as num-cpus, so this arithmetic and Ray's cannot disagree.
*/}}
{{- define "mnist-common.workerCpus" -}}
{{- $resources := .Values.worker.resources | default dict }}
{{- $cpu := dig "limits" "cpu" "" $resources | default (dig "requests" "cpu" "" $resources) | toString }}
{{- if regexMatch "^[0-9]+m$" $cpu }}
{{- ceil (divf (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?$" $cpu }}
{{- ceil (float64 $cpu) }}
{{- else }}
{{- fail (printf "worker.resources needs a CPU limit or request in cores or millicores (such as 2 or 1500m), got %q: Ray's num-cpus on a worker pod comes from it" $cpu) }}
{{- end }}
{{- end }}

{{/*
Environment of the Ray pods and the test pods: Keras 2 (tf-keras), Serve's HAProxy mode (with "haproxy" true),
object-storage access, and no GPUs for a pod that has none (called with dict "root" $ "gpu" <bool> ["haproxy" <bool>]).
*/}}
{{- define "mnist-common.env" -}}
{{- $root := .root -}}
- name: TF_USE_LEGACY_KERAS
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- if .haproxy }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
- name: RAY_SERVE_HAPROXY_RETRY_ON
  value: conn-failure empty-response
{{- end }}
{{- if not .gpu }}
{{ include "mnist-common.noGpuEnv" $root }}
{{- end }}
{{- with $root.Values.storage }}
{{- if .gcsCredentialsSecret }}
- name: GOOGLE_APPLICATION_CREDENTIALS
  value: {{ printf "/var/run/secrets/mnist-train/gcs/%s" .gcsCredentialsKey | quote }}
{{- end }}
{{- if .existingSecret }}
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .accessKeyIdKey }}
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretAccessKeyKey }}
{{- end }}
{{- if .endpointUrl }}
- name: AWS_ENDPOINT_URL
  value: {{ .endpointUrl | quote }}
{{- end }}
{{- if .region }}
- name: AWS_REGION
  value: {{ .region | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* On a GPU node whose default runtime is NVIDIA's, a pod sees every GPU unless told otherwise. */}}
{{- define "mnist-common.noGpuEnv" -}}
- name: NVIDIA_VISIBLE_DEVICES
  value: void
{{- end }}

{{/* Volumes of the head and workers: /dev/shm of the given size, the GCS key, the user's extra volumes. */}}
{{- define "mnist-common.volumes" -}}
- name: dshm
  emptyDir:
    medium: Memory
    sizeLimit: {{ .shmSize }}
{{- with .root.Values.storage.gcsCredentialsSecret }}
- name: gcs-credentials
  secret:
    secretName: {{ . }}
{{- end }}
{{- with .root.Values.pods.extraVolumes }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{- define "mnist-common.volumeMounts" -}}
- {name: dshm, mountPath: /dev/shm}
{{- if .Values.storage.gcsCredentialsSecret }}
- {name: gcs-credentials, mountPath: /var/run/secrets/mnist-train/gcs, readOnly: true}
{{- end }}
{{- with .Values.pods.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A pod template's metadata: the release's selector labels, its component, the user's pod labels and annotations. */}}
{{- define "mnist-common.podMetadata" -}}
labels:
  {{- include "mnist-common.selectorLabels" .root | nindent 2 }}
  app.kubernetes.io/component: {{ .component }}
  {{- with .root.Values.pods.labels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- with .root.Values.pods.annotations }}
annotations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Where a pod may run (called with a dict of nodeSelector, tolerations, affinity). */}}
{{- define "mnist-common.placement" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/* Pod-level security: seccomp RuntimeDefault, the image's non-root ray user (uid 1000, group users 100). */}}
{{- define "mnist-common.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/*
Container security. Ray writes its session files under /tmp and the runtime_env under the home directory, so the
root filesystem stays writable; everything else is locked down.
*/}}
{{- define "mnist-common.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod spec fields shared by every pod of the release. */}}
{{- define "mnist-common.podCommon" -}}
automountServiceAccountToken: {{ .Values.automountServiceAccountToken }}
{{- with .Values.serviceAccountName }}
serviceAccountName: {{ . }}
{{- end }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
{{- range . }}
  - name: {{ . }}
{{- end }}
{{- end }}
securityContext:
  {{- include "mnist-common.podSecurityContext" . | nindent 2 }}
{{- with .Values.scheduling.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Pod spec fields of the Ray pods only (head and workers). */}}
{{- define "mnist-common.rayPod" -}}
{{- with .Values.pods.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Whether to make the PodMonitor: asked for, and the cluster serves the prometheus-operator's CRD. */}}
{{- define "mnist-common.podMonitor" -}}
{{- if and .Values.metrics.podMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") }}true{{ end }}
{{- end }}
