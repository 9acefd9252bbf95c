{{/* mnist-serve's own helpers; those both charts share are the library chart mnist-common's (charts/mnist-common, held as charts/mnist-serve/charts/mnist-common). */}}

{{/* The Service KubeRay makes for Ray Serve: <RayService name>-serve-svc (utils.GenerateServeServiceName). */}}
{{- define "mnist-serve.serveService" -}}
{{- printf "%s-serve-svc" (include "mnist-common.fullname" .) }}
{{- end }}

{{/* The application's URL inside the cluster. */}}
{{- define "mnist-serve.url" -}}
{{- printf "http://%s.%s.svc:8000" (include "mnist-serve.serveService" .) .Release.Namespace }}
{{- end }}

{{/* GPUs per replica: serve.gpusPerReplica with gpu.enabled, else 0. */}}
{{- define "mnist-serve.gpusPerReplica" -}}
{{- ternary .Values.serve.gpusPerReplica 0 .Values.gpu.enabled }}
{{- end }}

{{/* Replicas one worker pod holds: as many as its CPUs allow and, with GPUs, as many as its one GPU allows. */}}
{{- define "mnist-serve.replicasPerPod" -}}
{{- $perPod := floor (addf (divf (include "mnist-common.workerCpus" .) .Values.serve.cpusPerReplica) 0.000001) }}
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
{{- $cpus := include "mnist-common.workerCpus" . }}
{{- if lt (float64 $cpus) (float64 $s.cpusPerReplica) }}
{{- fail (printf "serve.cpusPerReplica %v does not fit a worker pod, which has %v CPUs (worker.resources); raise the worker's CPU limit or lower serve.cpusPerReplica" $s.cpusPerReplica $cpus) }}
{{- end }}
{{- $port := int .Values.metrics.rayPort }}
{{- if has $port (list 6379 8000 8265 10001) }}
{{- fail (printf "metrics.rayPort %d collides with a port Ray or Ray Serve already uses (6379, 8000, 8265, 10001); keep 8080" $port) }}
{{- end }}
{{- range $group := list "head" "worker" }}
{{- if lt (int64 (include "mnist-common.objectStoreBytes" (index $.Values $group).shmSize)) 134217728 }}
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
