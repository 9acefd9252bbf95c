{{/*
Most helpers below are mnist-train's, renamed (a chart cannot include another chart's templates without a library
chart). The chart tests render both charts with the same values and check that the pods come out the same.
*/}}

{{/* Chart name, truncated to fit label values. */}}
{{- define "mnist-serve.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name: the RayService's name. KubeRay names the RayCluster <name>-<5 random> and the Services
<name>-serve-svc and <name>-head-svc, and accepts RayService names of up to 47 characters: 40 leaves room.
*/}}
{{- define "mnist-serve.fullname" -}}
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

{{- define "mnist-serve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "mnist-serve.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnist-serve.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels for every object. */}}
{{- define "mnist-serve.labels" -}}
helm.sh/chart: {{ include "mnist-serve.chart" . }}
{{ include "mnist-serve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mnist-train
{{- end }}

{{/* The Service KubeRay makes for Ray Serve: <RayService name>-serve-svc (utils.GenerateServeServiceName). */}}
{{- define "mnist-serve.serveService" -}}
{{- printf "%s-serve-svc" (include "mnist-serve.fullname" .) }}
{{- end }}

{{/* The application's URL inside the cluster. */}}
{{- define "mnist-serve.url" -}}
{{- printf "http://%s.%s.svc:8000" (include "mnist-serve.serveService" .) .Release.Namespace }}
{{- end }}

{{/* Image reference: <repository>@<digest> when pinned by digest, else a tag that follows the GPU switch. */}}
{{- define "mnist-serve.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $flavor := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Ray version of the image (Chart.yaml annotation ray.io/version): the RayCluster's rayVersion. */}}
{{- define "mnist-serve.rayVersion" -}}
{{- index .Chart.Annotations "ray.io/version" }}
{{- end }}

{{/* Ray's object store in bytes for a /dev/shm size such as 512Mi or 2Gi: 70% of it. */}}
{{- define "mnist-serve.objectStoreBytes" -}}
{{- $number := regexFind "^[0-9]+" . }}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" .) }}
{{- div (mul (int64 $number) $unit 7) 10 }}
{{- end }}

{{/*
The CPUs Ray sees on a worker pod: KubeRay's rule (the container's CPU limit, else its request, rounded up). The
chart also passes it as num-cpus, so this arithmetic and Ray's cannot disagree.
*/}}
{{- define "mnist-serve.workerCpus" -}}
{{- $resources := .Values.worker.resources | default dict }}
{{- $cpu := dig "limits" "cpu" "" $resources | default (dig "requests" "cpu" "" $resources) | toString }}
{{- if regexMatch "^[0-9]+m$" $cpu }}
{{- ceil (divf (trimSuffix "m" $cpu | atoi) 1000) }}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?$" $cpu }}
{{- ceil (float64 $cpu) }}
{{- else }}
{{- fail (printf "worker.resources needs a CPU limit or request in cores or millicores (such as 2 or 1500m), got %q: it decides how many replicas a worker pod holds" $cpu) }}
{{- end }}
{{- end }}

{{/* GPUs per replica: serve.gpusPerReplica with gpu.enabled, else 0. */}}
{{- define "mnist-serve.gpusPerReplica" -}}
{{- ternary .Values.serve.gpusPerReplica 0 .Values.gpu.enabled }}
{{- end }}

{{/* Replicas one worker pod holds: as many as its CPUs allow and, with GPUs, as many as its one GPU allows. */}}
{{- define "mnist-serve.replicasPerPod" -}}
{{- $perPod := floor (addf (divf (include "mnist-serve.workerCpus" .) .Values.serve.cpusPerReplica) 0.000001) }}
{{- if .Values.gpu.enabled }}
{{- $perPod = min $perPod (floor (addf (divf 1 .Values.serve.gpusPerReplica) 0.000001)) }}
{{- end }}
{{- int $perPod }}
{{- end }}

{{/* Worker pods: enough to hold every replica, so the RayService never waits on a replica that cannot be placed. */}}
{{- define "mnist-serve.workerPods" -}}
{{- int (ceil (divf (int .Values.serve.replicas) (include "mnist-serve.replicasPerPod" .))) }}
{{- end }}

{{/*
Checks that span several values, which values.schema.json cannot express. Each fails the render with one clear line.
*/}}
{{- define "mnist-serve.validate" -}}
{{- $s := .Values.serve }}
{{- $cpus := include "mnist-serve.workerCpus" . }}
{{- if lt (float64 $cpus) (float64 $s.cpusPerReplica) }}
{{- fail (printf "serve.cpusPerReplica %v does not fit a worker pod, which has %v CPUs (worker.resources); raise the worker's CPU limit or lower serve.cpusPerReplica" $s.cpusPerReplica $cpus) }}
{{- end }}
{{- $port := int .Values.metrics.rayPort }}
{{- if has $port (list 6379 8000 8265 10001) }}
{{- fail (printf "metrics.rayPort %d collides with a port Ray or Ray Serve already uses (6379, 8000, 8265, 10001); keep 8080" $port) }}
{{- end }}
{{- range $group := list "head" "worker" }}
{{- if lt (int64 (include "mnist-serve.objectStoreBytes" (index $.Values $group).shmSize)) 134217728 }}
{{- fail (printf "%s.shmSize %s leaves Ray's object store under its 128Mi minimum; use at least 192Mi" $group (index $.Values $group).shmSize) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The `args` of job.serve:app: exactly the fields of job.config.ServeConfig (the flags of `mnist-train serve`). host,
port and address belong to the CLI's own Ray; on KubeRay, Serve's http_options and the cluster decide them.
*/}}
{{- define "mnist-serve.args" -}}
{{- $s := .Values.serve }}
model_uri: {{ $s.modelUri | quote }}
replicas: {{ int $s.replicas }}
cpus_per_replica: {{ $s.cpusPerReplica }}
gpus_per_replica: {{ include "mnist-serve.gpusPerReplica" . }}
max_batch_size: {{ int $s.maxBatchSize }}
batch_wait_ms: {{ $s.batchWaitMs }}
max_digits: {{ int $s.maxDigits }}
{{- end }}

{{/*
The Ray Serve config (the body of PUT /api/serve/applications/). The deployment's options repeat what job.serve
derives from the args: Serve applies a config's deployment options over the code's, so the two must agree.
*/}}
{{- define "mnist-serve.serveConfig" -}}
{{- $args := include "mnist-serve.args" . | fromYaml -}}
http_options:
  host: 0.0.0.0
  port: 8000
applications:
  - name: mnist
    import_path: job.serve:app
    route_prefix: /
    args:
      {{- toYaml $args | nindent 6 }}
    deployments:
      - name: digits
        num_replicas: {{ $args.replicas }}
        ray_actor_options:
          num_cpus: {{ $args.cpus_per_replica }}
          num_gpus: {{ $args.gpus_per_replica }}
{{- end }}

{{/*
Environment of the Ray pods: Keras 2 (tf-keras), Serve's HAProxy mode (serve.haproxy), object-storage access, and no
GPUs for a pod that has none (called with dict "root" $ "gpu" <bool>).
*/}}
{{- define "mnist-serve.env" -}}
{{- $root := .root -}}
- name: TF_USE_LEGACY_KERAS
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- if $root.Values.serve.haproxy }}
- name: RAY_SERVE_ENABLE_HA_PROXY
  value: "1"
- name: RAY_SERVE_THROUGHPUT_OPTIMIZED
  value: "1"
- name: RAY_SERVE_HAPROXY_RETRY_ON
  value: conn-failure empty-response
{{- end }}
{{- if not .gpu }}
{{ include "mnist-serve.noGpuEnv" $root }}
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
{{- define "mnist-serve.noGpuEnv" -}}
- name: NVIDIA_VISIBLE_DEVICES
  value: void
{{- end }}

{{/* Volumes of the head and workers: /dev/shm of the given size, the GCS key, the user's extra volumes. */}}
{{- define "mnist-serve.volumes" -}}
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

{{- define "mnist-serve.volumeMounts" -}}
- {name: dshm, mountPath: /dev/shm}
{{- if .Values.storage.gcsCredentialsSecret }}
- {name: gcs-credentials, mountPath: /var/run/secrets/mnist-train/gcs, readOnly: true}
{{- end }}
{{- with .Values.pods.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A pod template's metadata: the release's selector labels, its component, the user's pod labels and annotations. */}}
{{- define "mnist-serve.podMetadata" -}}
labels:
  {{- include "mnist-serve.selectorLabels" .root | nindent 2 }}
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
{{- define "mnist-serve.placement" -}}
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
{{- define "mnist-serve.podSecurityContext" -}}
runAsNonRoot: true
runAsUser: 1000
runAsGroup: 100
fsGroup: 100
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Container security: Ray writes its session files under /tmp, so the root filesystem stays writable. */}}
{{- define "mnist-serve.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod spec fields shared by every pod of the release. */}}
{{- define "mnist-serve.podCommon" -}}
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
  {{- include "mnist-serve.podSecurityContext" . | nindent 2 }}
{{- with .Values.scheduling.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Pod spec fields of the Ray pods only (head and workers). */}}
{{- define "mnist-serve.rayPod" -}}
{{- with .Values.pods.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Whether to make the PodMonitor: asked for, and the cluster serves the prometheus-operator's CRD. */}}
{{- define "mnist-serve.podMonitor" -}}
{{- if and .Values.metrics.podMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") }}true{{ end }}
{{- end }}
