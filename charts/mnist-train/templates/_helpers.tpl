{{/* Chart name, truncated to fit label values. */}}
{{- define "mnist-train.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 40 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified app name. KubeRay derives the RayCluster, Service and submitter Job names from the RayJob name and
adds a suffix, so it stays at 40 characters to keep every derived name under the 63-character limit.
*/}}
{{- define "mnist-train.fullname" -}}
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

{{- define "mnist-train.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select this release's pods. */}}
{{- define "mnist-train.selectorLabels" -}}
app.kubernetes.io/name: {{ include "mnist-train.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Standard labels for every object. */}}
{{- define "mnist-train.labels" -}}
helm.sh/chart: {{ include "mnist-train.chart" . }}
{{ include "mnist-train.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: mnist-train
{{- end }}

{{/* Run name: train.runName, or the release name. */}}
{{- define "mnist-train.runName" -}}
{{- default .Release.Name .Values.train.runName }}
{{- end }}

{{/* Where this run's results land: <outputBase>/<runName>. */}}
{{- define "mnist-train.output" -}}
{{- printf "%s/%s" (trimSuffix "/" .Values.train.outputBase) (include "mnist-train.runName" .) }}
{{- end }}

{{/* Image reference: <repository>@<digest> when pinned by digest, else a tag that follows the GPU switch. */}}
{{- define "mnist-train.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- $flavor := ternary "gpu" "cpu" .Values.gpu.enabled }}
{{- $tag := default (printf "%s-%s" .Chart.AppVersion $flavor) .Values.image.tag }}
{{- printf "%s:%s" .Values.image.repository $tag }}
{{- end }}
{{- end }}

{{/* The Ray version of the image (Chart.yaml annotation ray.io/version): the RayCluster's rayVersion. */}}
{{- define "mnist-train.rayVersion" -}}
{{- index .Chart.Annotations "ray.io/version" }}
{{- end }}

{{/* A CPU quantity such as 2, "1.5" or 1500m in millicores. */}}
{{- define "mnist-train.milliCPU" -}}
{{- $q := toString . }}
{{- if hasSuffix "m" $q }}{{ trimSuffix "m" $q | int64 }}{{ else }}{{ mulf (float64 $q) 1000 | int64 }}{{ end }}
{{- end }}

{{/* A worker pod's CPUs as written in worker.resources (limits, else requests); empty if neither says. */}}
{{- define "mnist-train.workerPodCPU" -}}
{{- $r := .Values.worker.resources }}
{{- (($r.limits | default dict).cpu | default (($r.requests | default dict).cpu)) | default "" }}
{{- end }}

{{/* --cpus-per-worker: train.cpusPerWorker, else a worker pod's CPUs (one worker a pod), else 1. */}}
{{- define "mnist-train.cpusPerWorker" -}}
{{- $pod := include "mnist-train.workerPodCPU" . }}
{{- if not (kindIs "invalid" .Values.train.cpusPerWorker) }}{{ .Values.train.cpusPerWorker }}
{{- else if $pod }}{{ divf (int64 (include "mnist-train.milliCPU" $pod)) 1000 }}
{{- else }}1{{ end }}
{{- end }}

{{/* Ray's object store in bytes for a /dev/shm size such as 512Mi or 2Gi: 70% of it. */}}
{{- define "mnist-train.objectStoreBytes" -}}
{{- $number := regexFind "^[0-9]+" . }}
{{- $unit := ternary 1073741824 1048576 (hasSuffix "Gi" .) }}
{{- div (mul (int64 $number) $unit 7) 10 }}
{{- end }}

{{/*
Checks that span several values, which values.schema.json cannot express. Each fails the render with one clear line.
*/}}
{{- define "mnist-train.validate" -}}
{{- $t := .Values.train }}
{{- if mod (int $t.batchSize) (int $t.workers) }}
{{- fail (printf "train.batchSize %d does not split evenly over train.workers %d; use a multiple of %d" (int $t.batchSize) (int $t.workers) (int $t.workers)) }}
{{- end }}
{{- if and (not .Values.rayJob.shutdownAfterJobFinishes) .Values.rayJob.ttlSecondsAfterFinished }}
{{- fail "rayJob.ttlSecondsAfterFinished needs rayJob.shutdownAfterJobFinishes: true (there is no cluster to delete otherwise); set it to 0" }}
{{- end }}
{{- if eq (int $t.metricsPort) (int .Values.metrics.rayPort) }}
{{- fail (printf "train.metricsPort %d collides with Ray's own metrics port (metrics.rayPort); pick another, e.g. 9400" (int $t.metricsPort)) }}
{{- end }}
{{- $pod := include "mnist-train.workerPodCPU" . }}
{{- if and $pod (not (kindIs "invalid" $t.cpusPerWorker)) }}
{{- $podMilli := int64 (include "mnist-train.milliCPU" $pod) }}
{{- $workerMilli := int64 (mulf $t.cpusPerWorker 1000) }}
{{- if gt $workerMilli $podMilli }}
{{- fail (printf "train.cpusPerWorker %v is more than a worker pod's %v CPUs (worker.resources); no pod could hold a worker: lower it or raise the pod's" $t.cpusPerWorker $pod) }}
{{- end }}
{{- if le (mul $workerMilli 2) $podMilli }}
{{- fail (printf "train.cpusPerWorker %v would let two workers share a worker pod of %v CPUs (Ray packs them, one pod idles); leave it empty (the pod's CPUs) or set it above half of them" $t.cpusPerWorker $pod) }}
{{- end }}
{{- end }}
{{- range $group := list "head" "worker" }}
{{- if lt (int64 (include "mnist-train.objectStoreBytes" (index $.Values $group).shmSize)) 134217728 }}
{{- fail (printf "%s.shmSize %s leaves Ray's object store under its 128Mi minimum; use at least 192Mi" $group (index $.Values $group).shmSize) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The job's CLI call: every value in `train` becomes its flag, each argument shell-quoted. `job.cli.parse` of this
line gives back exactly these values (a chart test checks it).
*/}}
{{- define "mnist-train.entrypoint" -}}
{{- $t := .Values.train }}
{{- $args := list "python" "-m" "job" "train" }}
{{- $args = concat $args (list "--models" (join "," $t.models)) }}
{{- $args = concat $args (list "--epochs" (toString (int $t.epochs)) "--batch-size" (toString (int $t.batchSize))) }}
{{- $args = concat $args (list "--workers" (toString (int $t.workers)) "--cpus-per-worker" (include "mnist-train.cpusPerWorker" .)) }}
{{- $args = append $args (ternary "--gpu" "--no-gpu" .Values.gpu.enabled) }}
{{- $args = concat $args (list "--dataset" $t.dataset) }}
{{- if $t.dataUri }}
{{- $args = concat $args (list "--data-uri" $t.dataUri) }}
{{- end }}
{{- $args = concat $args (list "--output" (include "mnist-train.output" .) "--run-name" (include "mnist-train.runName" .)) }}
{{- $args = concat $args (list "--seed" (toString (int $t.seed)) "--ensemble" (toString (int $t.ensemble))) }}
{{- /* The driver runs on the head: join that cluster, never start a private local Ray. */}}
{{- $args = concat $args (list "--address" "auto") }}
{{- $args = append $args (ternary "--overwrite" "--no-overwrite" $t.overwrite) }}
{{- $linger := $t.metricsLinger }}
{{- if kindIs "invalid" $linger }}
{{- $linger = ternary 60 0 (and .Values.metrics.podMonitor.enabled (not .Values.metrics.pushgatewayUrl)) }}
{{- end }}
{{- $args = concat $args (list "--metrics-port" (toString (int $t.metricsPort)) "--metrics-linger" (toString $linger)) }}
{{- if .Values.metrics.pushgatewayUrl }}
{{- $args = concat $args (list "--pushgateway" .Values.metrics.pushgatewayUrl) }}
{{- end }}
{{- $args = concat $args (list "--max-failures" (toString (int $t.maxFailures))) }}
{{- $args = concat $args (list "--steps-per-execution" (toString (int $t.stepsPerExecution))) }}
{{- $args = concat $args (list "--start-timeout" (toString $t.startTimeout)) }}
{{- $args = concat $args (list "--checkpoint-interval" (toString $t.checkpointInterval)) }}
{{- $args = concat $args (list "--storage-retries" (toString (int $t.storageRetries))) }}
{{- $args = append $args (ternary "--mixed-precision" "--no-mixed-precision" $t.mixedPrecision) }}
{{- $args = append $args (ternary "--jit-compile" "--no-jit-compile" $t.jitCompile) }}
{{- $quoted := list }}
{{- range $args }}
{{- $quoted = append $quoted (include "mnist-train.shellQuote" .) }}
{{- end }}
{{- join " " $quoted }}
{{- end }}

{{/* POSIX shell quoting: safe words stay bare, anything else goes in single quotes with ' written as '\''. */}}
{{- define "mnist-train.shellQuote" -}}
{{- if regexMatch "^[A-Za-z0-9_./:=,+@%-]+$" . }}
{{- . }}
{{- else }}
{{- printf "'%s'" (replace "'" "'\\''" .) }}
{{- end }}
{{- end }}

{{/*
Environment of the head, the workers and the test pod: Keras 2 (tf-keras), object-storage access, and no GPUs for a
pod that trains on none (called with dict "root" $ "gpu" <bool>).
*/}}
{{- define "mnist-train.env" -}}
{{- $root := .root -}}
- name: TF_USE_LEGACY_KERAS
  value: "1"
- name: PYTHONUNBUFFERED
  value: "1"
{{- if not .gpu }}
{{ include "mnist-train.noGpuEnv" $root }}
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
{{- define "mnist-train.noGpuEnv" -}}
- name: NVIDIA_VISIBLE_DEVICES
  value: void
{{- end }}

{{/* Volumes of the head and workers: /dev/shm of the given size, the GCS key, the user's extra volumes. */}}
{{- define "mnist-train.volumes" -}}
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

{{- define "mnist-train.volumeMounts" -}}
- {name: dshm, mountPath: /dev/shm}
{{- if .Values.storage.gcsCredentialsSecret }}
- {name: gcs-credentials, mountPath: /var/run/secrets/mnist-train/gcs, readOnly: true}
{{- end }}
{{- with .Values.pods.extraVolumeMounts }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* A pod template's metadata: the release's selector labels, its component, the user's pod labels and annotations. */}}
{{- define "mnist-train.podMetadata" -}}
labels:
  {{- include "mnist-train.selectorLabels" .root | nindent 2 }}
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
{{- define "mnist-train.placement" -}}
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
{{- define "mnist-train.podSecurityContext" -}}
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
{{- define "mnist-train.securityContext" -}}
runAsNonRoot: true
allowPrivilegeEscalation: false
capabilities:
  drop: [ALL]
seccompProfile:
  type: RuntimeDefault
{{- end }}

{{/* Pod spec fields shared by every pod of the release. */}}
{{- define "mnist-train.podCommon" -}}
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
  {{- include "mnist-train.podSecurityContext" . | nindent 2 }}
{{- with .Values.scheduling.priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Pod spec fields of the Ray pods only (head and workers). */}}
{{- define "mnist-train.rayPod" -}}
{{- with .Values.pods.runtimeClassName }}
runtimeClassName: {{ . }}
{{- end }}
{{- end }}

{{/* Whether to make the PodMonitor: asked for, and the cluster serves the prometheus-operator's CRD. */}}
{{- define "mnist-train.podMonitor" -}}
{{- if and .Values.metrics.podMonitor.enabled (.Capabilities.APIVersions.Has "monitoring.coreos.com/v1/PodMonitor") }}true{{ end }}
{{- end }}
